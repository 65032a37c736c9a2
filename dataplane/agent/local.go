package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
)

// localServer is the compute layer's API on the node's unix socket.
type localServer struct {
	agentv1.UnimplementedLocalAgentServiceServer
	a *Agent
}

// attachTimeout bounds how long AttachPort waits for the controller to
// send the port and for the data path to program it.
const attachTimeout = 15 * time.Second

func hostIfName(portID uint32) string { return fmt.Sprintf("mp%d", portID) }

func parseMAC(s string) (net.HardwareAddr, error) {
	m, err := net.ParseMAC(s)
	if err != nil || len(m) != 6 {
		return nil, fmt.Errorf("MAC %q: %v", s, err)
	}
	return m, nil
}

func (s *localServer) AttachPort(ctx context.Context, r *agentv1.AttachPortRequest) (*agentv1.AttachPortResponse, error) {
	a := s.a
	if !strings.HasPrefix(r.Port, "projects/") {
		return nil, status.Errorf(codes.InvalidArgument, "port %q: want projects/{project}/ports/{port}", r.Port)
	}
	netnsPath := r.GetNetnsPath()
	if netnsPath == "" {
		return nil, status.Error(codes.InvalidArgument, "netns_path is required (tap devices are not supported by this agent yet)")
	}
	if _, err := os.Stat(netnsPath); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "netns_path %s: %v", netnsPath, err)
	}
	ifName := r.InterfaceName
	if ifName == "" {
		ifName = "eth0"
	}
	ctx, cancel := context.WithTimeout(ctx, attachTimeout)
	defer cancel()
	if err := a.bind(ctx, r.Port, "nodes/"+a.cfg.Node); err != nil {
		return nil, err
	}
	p, sn, err := a.waitPort(ctx, r.Port)
	if err != nil {
		return nil, err
	}
	prefix, err := netip.ParsePrefix(sn.Cidr)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "subnet %s CIDR: %v", sn.Name, err)
	}
	gw, _ := netip.ParseAddr(sn.GatewayIp)
	mac, err := parseMAC(p.Mac)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "port %s: %v", p.Name, err)
	}
	var addrs []netip.Prefix
	for _, ip := range ipv4s(p.Ips) {
		addrs = append(addrs, netip.PrefixFrom(ip, prefix.Bits()))
	}
	host := hostIfName(p.Id)
	if err := a.plumb.EnsureWorkload(WorkloadSpec{
		HostName: host, NetnsPath: netnsPath, IfName: ifName, MAC: mac, Addrs: addrs, Gateway: gw, MTU: int(sn.Mtu),
	}); err != nil {
		return nil, status.Errorf(codes.Internal, "plumb %s into %s: %v", p.Name, netnsPath, err)
	}
	a.mu.Lock()
	a.attach[r.Port] = &attachment{Port: r.Port, PortID: p.Id, NetnsPath: netnsPath, IfName: ifName, HostIf: host}
	a.mu.Unlock()
	if a.ovs != nil {
		if err := a.ovs.plug(ctx, host, p.Id, netnsPath, ifName); err != nil {
			return nil, status.Errorf(codes.DeadlineExceeded, "port %s: %v", r.Port, err)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil, status.Errorf(codes.DeadlineExceeded, "port %s plumbed but not programmed in time: %v", r.Port, a.attachError(r.Port))
		case <-a.afterReconcile():
		}
		a.mu.Lock()
		at := a.attach[r.Port]
		ready := at != nil && at.Ready
		a.mu.Unlock()
		if ready {
			break
		}
	}
	a.log.Info("port attached", "port", r.Port, "netns", netnsPath, "host_if", host)
	resp := &agentv1.AttachPortResponse{HostInterface: host, Mac: p.Mac, Gateway: sn.GatewayIp, Mtu: sn.Mtu, PortId: p.Id}
	for _, ap := range addrs {
		resp.Ips = append(resp.Ips, ap.String())
	}
	return resp, nil
}

func (a *Agent) attachError(port string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if at := a.attach[port]; at != nil && at.Error != "" {
		return at.Error
	}
	return "no error reported"
}

// bind sets the port's node through the tenant API (a no-op if it already is).
func (a *Agent) bind(ctx context.Context, port, node string) error {
	cli := v1.NewNetworkServiceClient(a.conn)
	cctx := a.tokenCtx(ctx)
	cur, err := cli.GetPort(cctx, &v1.GetPortRequest{Name: port})
	if err != nil {
		return fmt.Errorf("get port %s from the controller: %w", port, err)
	}
	if cur.Node == node {
		return nil
	}
	if node == "" && cur.Node != "nodes/"+a.cfg.Node {
		return nil // bound elsewhere meanwhile (migrated): not ours to unbind
	}
	_, err = cli.UpdatePort(cctx, &v1.UpdatePortRequest{
		Port:       &v1.Port{Name: port, Etag: cur.Etag, Node: node},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"node"}},
	})
	if err != nil {
		return fmt.Errorf("bind port %s to %q: %w", port, node, err)
	}
	return nil
}

// waitPort waits until the desired state has the port bound to this node.
func (a *Agent) waitPort(ctx context.Context, name string) (*agentv1.Port, *agentv1.Subnet, error) {
	for {
		p, sn := a.portByName(name)
		if p != nil && sn != nil && p.Node == a.cfg.Node {
			return p, sn, nil
		}
		select {
		case <-ctx.Done():
			return nil, nil, status.Errorf(codes.DeadlineExceeded, "the controller did not send port %s bound to node %s in time: is the agent connected?", name, a.cfg.Node)
		case <-a.afterReconcile():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *localServer) DetachPort(ctx context.Context, r *agentv1.DetachPortRequest) (*agentv1.DetachPortResponse, error) {
	a := s.a
	a.mu.Lock()
	at := a.attach[r.Port]
	a.mu.Unlock()
	if at == nil {
		return nil, status.Errorf(codes.NotFound, "port %s is not attached on node %s", r.Port, a.cfg.Node)
	}
	if a.ovs != nil {
		if err := a.ovs.unplug(ctx, at.HostIf); err != nil {
			return nil, status.Errorf(codes.Internal, "port %s: %v", r.Port, err)
		}
	}
	if err := a.plumb.DeleteWorkload(at.HostIf); err != nil {
		return nil, status.Errorf(codes.Internal, "remove %s: %v", at.HostIf, err)
	}
	a.mu.Lock()
	delete(a.attach, r.Port)
	a.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, attachTimeout)
	defer cancel()
	select {
	case <-a.afterReconcile():
	case <-ctx.Done():
		return nil, status.Errorf(codes.DeadlineExceeded, "port %s unplugged but the data path did not reconcile in time", r.Port)
	}
	if err := a.bind(ctx, r.Port, ""); err != nil {
		return nil, err
	}
	a.log.Info("port detached", "port", r.Port)
	return &agentv1.DetachPortResponse{}, nil
}

func (s *localServer) ListAttachments(context.Context, *agentv1.ListAttachmentsRequest) (*agentv1.ListAttachmentsResponse, error) {
	a := s.a
	a.mu.Lock()
	defer a.mu.Unlock()
	out := &agentv1.ListAttachmentsResponse{}
	for _, at := range a.attach {
		out.Attachments = append(out.Attachments, &agentv1.Attachment{Port: at.Port, PortId: at.PortID, NetnsPath: at.NetnsPath,
			HostInterface: at.HostIf, Ready: at.Ready, Error: at.Error})
	}
	sort.Slice(out.Attachments, func(i, j int) bool { return out.Attachments[i].Port < out.Attachments[j].Port })
	return out, nil
}
