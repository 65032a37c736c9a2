// Command fakeagent stands in for meridian-agent in the harness's own
// tests, so that the agent and workload stages of package e2e can be
// tested without the eBPF data path: it takes the agent's flags, serves
// the local API on --socket and plumbs workloads with package plumbing,
// reading each port and its subnet from the controller. It forwards
// nothing and must never be used outside tests.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	meridianv1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/dataplane/plumbing"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "fakeagent:", err)
		os.Exit(1)
	}
}

func run() error {
	fs := flag.NewFlagSet("fakeagent", flag.ContinueOnError)
	controller := fs.String("controller", "", "controller gRPC address")
	token := fs.String("token", "", "bearer token")
	socket := fs.String("socket", "", "local API socket")
	bpffs := fs.String("bpffs", "", "pin directory (created, to mimic the agent)")
	// Accepted for the agent's command line; unused here.
	for _, name := range []string{"node", "underlay-ip", "state-dir", "roles", "log-level"} {
		fs.String(name, "", "ignored")
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		return err
	}
	if err := os.MkdirAll(*bpffs, 0o700); err != nil {
		return fmt.Errorf("pin directory: %w", err)
	}
	conn, err := grpc.NewClient(*controller, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	defer conn.Close()
	l, err := net.Listen("unix", *socket)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := grpc.NewServer()
	agentv1.RegisterLocalAgentServiceServer(srv, &local{api: meridianv1.NewNetworkServiceClient(conn), token: *token})
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		srv.GracefulStop()
	}()
	return srv.Serve(l)
}

type local struct {
	agentv1.UnimplementedLocalAgentServiceServer
	api   meridianv1.NetworkServiceClient
	token string
}

func (s *local) AttachPort(ctx context.Context, r *agentv1.AttachPortRequest) (*agentv1.AttachPortResponse, error) {
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+s.token)
	port, err := s.api.GetPort(ctx, &meridianv1.GetPortRequest{Name: r.GetPort()})
	if err != nil {
		return nil, err
	}
	subnet, err := s.api.GetSubnet(ctx, &meridianv1.GetSubnetRequest{Name: port.GetSubnet()})
	if err != nil {
		return nil, err
	}
	cidr, err := netip.ParsePrefix(subnet.GetCidrBlock())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "subnet cidr: %v", err)
	}
	mac, err := net.ParseMAC(port.GetMacAddress())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "port mac: %v", err)
	}
	gw, _ := netip.ParseAddr(subnet.GetGatewayIp())
	spec := plumbing.WorkloadSpec{
		HostName: hostName(port.GetName()), NetnsPath: r.GetNetnsPath(), IfName: r.GetInterfaceName(),
		MAC: mac, Gateway: gw, MTU: int(subnet.GetMtu()),
	}
	resp := &agentv1.AttachPortResponse{Mac: port.GetMacAddress(), Gateway: subnet.GetGatewayIp(), Mtu: subnet.GetMtu()}
	for _, ip := range port.GetFixedIps() {
		a, err := netip.ParseAddr(ip)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "port ip: %v", err)
		}
		p := netip.PrefixFrom(a, cidr.Bits())
		spec.Addrs = append(spec.Addrs, p)
		resp.Ips = append(resp.Ips, p.String())
	}
	res, err := plumbing.EnsureWorkloadVeth(spec)
	if errors.Is(err, plumbing.ErrNetnsGone) {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	resp.HostInterface = spec.HostName
	resp.PortId = uint32(res.Index)
	return resp, nil
}

// hostName derives a stable, short host interface name from the port name
// (the real agent uses the port's numeric ID).
func hostName(port string) string {
	h := fnv.New32a()
	h.Write([]byte(port))
	return fmt.Sprintf("mp%08x", h.Sum32())
}

func (s *local) DetachPort(_ context.Context, r *agentv1.DetachPortRequest) (*agentv1.DetachPortResponse, error) {
	if err := plumbing.DeleteWorkloadVeth(hostName(r.GetPort())); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &agentv1.DetachPortResponse{}, nil
}
