package e2e

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"sigs.k8s.io/yaml"
)

// Topology is the declarative description of a test network.
//
//	nodes:
//	- name: node-1
//	  underlayHost: 11          # optional: last octet in the run's /24
//	workloads:
//	- name: web-1
//	  node: node-1
//	  port: projects/demo/ports/web-1
//	  subnet: projects/demo/vpcs/prod/subnets/web   # optional, see Workload
//	  ip: 10.0.1.11                                  # optional
//	  securityGroups: [projects/demo/securityGroups/web]
//	underlayMTU: 9000           # optional, the default
//	intent: |
//	  kind: Project
//	  name: projects/demo
//	  ...
type Topology struct {
	Nodes     []Node     `json:"nodes"`
	Workloads []Workload `json:"workloads,omitempty"`
	// Intent holds meridianctl apply documents ("---"-separated YAML): the
	// projects, VPCs, subnets, security groups and ACLs the scenario needs.
	// Node documents and the Port documents of workloads with a Subnet are
	// generated and appended; see Documents.
	Intent string `json:"intent,omitempty"`
	// UnderlayMTU is the MTU of the fabric; 0 means DefaultUnderlayMTU.
	UnderlayMTU int `json:"underlayMTU,omitempty"`
}

// DefaultUnderlayMTU is a data-centre fabric's jumbo MTU, so that 1500-byte
// workload packets fit after VXLAN's 50 bytes. Scenarios about MTU set
// their own.
const DefaultUnderlayMTU = 9000

func (t Topology) underlayMTU() int {
	if t.UnderlayMTU == 0 {
		return DefaultUnderlayMTU
	}
	return t.UnderlayMTU
}

// Node is one host: a namespace with an underlay address and an agent.
type Node struct {
	Name string `json:"name"`
	// UnderlayHost is the last octet of the node's address in the run's
	// underlay /24; 0 means 11 + the node's index. The /24 itself is chosen
	// per run so that concurrent runs never share addresses.
	UnderlayHost uint8 `json:"underlayHost,omitempty"`
	// Roles are the node's roles: compute, gateway, load-balancer; empty
	// means compute.
	Roles []string `json:"roles,omitempty"`
	// AgentArgs are extra flags of the node's agent, e.g. a gateway's
	// --uplink.
	AgentArgs []string `json:"agentArgs,omitempty"`
}

// Workload is one namespace plugged into a port on a node.
type Workload struct {
	Name string `json:"name"`
	Node string `json:"node"`
	// Port is the port's resource name, e.g. projects/demo/ports/web-1.
	Port string `json:"port"`
	// Subnet, when set, makes the harness generate the Port document (with
	// IP and SecurityGroups, bound to Node). Leave it empty when Intent
	// already has the port.
	Subnet         string   `json:"subnet,omitempty"`
	IP             string   `json:"ip,omitempty"`
	SecurityGroups []string `json:"securityGroups,omitempty"`
}

// LoadTopology reads a topology from a YAML (or JSON) file.
func LoadTopology(path string) (Topology, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Topology{}, fmt.Errorf("read topology: %w", err)
	}
	t, err := ParseTopology(b)
	if err != nil {
		return Topology{}, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// ParseTopology decodes and validates a topology; unknown fields are errors
// so that a misspelt key does not silently change the scenario.
func ParseTopology(b []byte) (Topology, error) {
	var t Topology
	if err := yaml.UnmarshalStrict(b, &t); err != nil {
		return Topology{}, fmt.Errorf("parse topology: %w", err)
	}
	return t, t.Validate()
}

// Validate reports every problem of the topology at once.
func (t Topology) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if len(t.Nodes) == 0 {
		bad("nodes: at least one node is needed")
	}
	if m := t.UnderlayMTU; m != 0 && (m < 1280 || m > 65535) {
		bad("underlayMTU %d: want 1280..65535", m)
	}
	names := map[string]string{fabricName: "the fabric"}
	hosts := map[uint8]string{}
	for i, n := range t.Nodes {
		if err := validName(n.Name); err != nil {
			bad("nodes[%d]: %w", i, err)
		} else if other, dup := names[n.Name]; dup {
			bad("nodes[%d]: name %q is already %s", i, n.Name, other)
		}
		names[n.Name] = "node " + n.Name
		h := t.underlayHost(i)
		if h == 0 || h == 255 {
			bad("nodes[%d]: underlayHost %d is not a host address", i, h)
		} else if other, dup := hosts[h]; dup {
			bad("nodes[%d]: underlayHost %d is already node %s's", i, h, other)
		}
		hosts[h] = n.Name
		for _, r := range n.Roles {
			if r != "compute" && r != "gateway" && r != "load-balancer" {
				bad("nodes[%d]: role %q is not compute, gateway or load-balancer", i, r)
			}
		}
	}
	ports := map[string]string{}
	for i, w := range t.Workloads {
		if err := validName(w.Name); err != nil {
			bad("workloads[%d]: %w", i, err)
		} else if other, dup := names[w.Name]; dup {
			bad("workloads[%d]: name %q is already %s", i, w.Name, other)
		}
		names[w.Name] = "workload " + w.Name
		if _, ok := t.node(w.Node); !ok {
			bad("workloads[%d] (%s): node %q is not in nodes", i, w.Name, w.Node)
		}
		if !strings.Contains(w.Port, "/ports/") {
			bad("workloads[%d] (%s): port %q is not a port name (projects/P/ports/NAME)", i, w.Name, w.Port)
		} else if other, dup := ports[w.Port]; dup {
			bad("workloads[%d] (%s): port %s is already workload %s's", i, w.Name, w.Port, other)
		}
		ports[w.Port] = w.Name
		if w.IP != "" {
			if _, err := netip.ParseAddr(w.IP); err != nil {
				bad("workloads[%d] (%s): ip: %w", i, w.Name, err)
			}
		}
		if w.Subnet == "" && (w.IP != "" || len(w.SecurityGroups) > 0) {
			bad("workloads[%d] (%s): ip and securityGroups need subnet (they go into the generated Port document)", i, w.Name)
		}
	}
	return errors.Join(errs...)
}

// validName keeps names usable inside namespace names and file names.
func validName(s string) error {
	if s == "" || len(s) > 32 {
		return fmt.Errorf("name %q: want 1 to 32 characters", s)
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("name %q: only a-z, 0-9 and '-' are allowed", s)
		}
	}
	return nil
}

func (n Node) nodeRoles() []string {
	if len(n.Roles) == 0 {
		return []string{"compute"}
	}
	return n.Roles
}

func (t Topology) underlayHost(i int) uint8 {
	if h := t.Nodes[i].UnderlayHost; h != 0 {
		return h
	}
	return uint8(11 + i)
}

func (t Topology) node(name string) (Node, bool) {
	for _, n := range t.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return Node{}, false
}

// Documents returns the meridianctl apply input for a run whose nodes have
// the given underlay addresses: Intent, then one Node document per node and
// one Port document per workload that names a subnet. apply sorts by
// dependency, so the order here does not matter.
func (t Topology) Documents(underlay map[string]netip.Addr) (string, error) {
	var docs []string
	if s := strings.TrimSpace(t.Intent); s != "" {
		docs = append(docs, s)
	}
	for _, n := range t.Nodes {
		var roles []string
		for _, r := range n.nodeRoles() {
			// The API's enum spelling of the agent's role names.
			roles = append(roles, strings.ToUpper(strings.ReplaceAll(r, "-", "_")))
		}
		ip, ok := underlay[n.Name]
		if !ok {
			return "", fmt.Errorf("node %s has no underlay address", n.Name)
		}
		d, err := yaml.Marshal(map[string]any{
			"kind": "Node", "name": "nodes/" + n.Name, "hostname": n.Name,
			"underlayIp": ip.String(), "roles": roles,
		})
		if err != nil {
			return "", fmt.Errorf("node %s document: %w", n.Name, err)
		}
		docs = append(docs, strings.TrimSpace(string(d)))
	}
	for _, w := range t.Workloads {
		if w.Subnet == "" {
			continue
		}
		port := map[string]any{"kind": "Port", "name": w.Port, "subnet": w.Subnet, "node": "nodes/" + w.Node, "deviceId": w.Name}
		if w.IP != "" {
			port["fixedIps"] = []string{w.IP}
		}
		if len(w.SecurityGroups) > 0 {
			port["securityGroups"] = w.SecurityGroups
		}
		d, err := yaml.Marshal(port)
		if err != nil {
			return "", fmt.Errorf("port document of workload %s: %w", w.Name, err)
		}
		docs = append(docs, strings.TrimSpace(string(d)))
	}
	return strings.Join(docs, "\n---\n") + "\n", nil
}
