// Package bgp is the BGP speaker of gateway nodes: it tells the fabric's
// routers which public addresses (elastic IPs, NAT-gateway addresses, and VPC
// prefixes when asked) this gateway serves. It embeds GoBGP and only
// originates routes: it installs nothing it receives into the host, and it
// knows nothing of the agent's objects beyond the pure RoutesFor helper.
//
// Both SetPeers and SetRoutes are declarative and diff against what is
// configured/announced, so a reconcile loop can call them with the full
// desired state every time: unchanged routes cause no UPDATE.
//
// Graceful restart: when the agent exits without stopping the speaker (a
// crash, kill -9, or a planned restart that simply exits), the TCP sessions
// close without a NOTIFICATION and a router with graceful restart negotiated
// keeps the routes as stale. The restarted agent must call SetRoutes with
// everything before SetPeers: the first UPDATEs of each new session then
// carry every route, followed by End-of-RIB, and the router's forwarding
// table does not change. Stop, by contrast, is an orderly shutdown: it sends
// a Cease and the router withdraws the routes.
package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/server"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
)

// Config is what a speaker needs to start.
type Config struct {
	ASN      uint32
	RouterID netip.Addr // IPv4, as BGP identifiers are 32-bit
	// ListenPort 0 or -1: do not listen; the sessions are outgoing only,
	// which lets several speakers share a host (and tests run many).
	ListenPort int32
	Logger     *slog.Logger // nil: slog.Default()
}

// Peer is one neighbour, as configured.
type Peer struct {
	Address netip.Addr
	ASN     uint32
	// HoldTime 0 means 90 s; otherwise at least 3 s (RFC 4271).
	HoldTime time.Duration
	Password string // TCP MD5; "" = none
	// GracefulRestart announces the capability so the peer keeps our
	// routes while the agent restarts. RestartTime 0 means 120 s.
	GracefulRestart bool
	RestartTime     time.Duration
	// EBGPMultihopTTL > 0 allows an eBGP peer that is not directly
	// connected (a router behind the uplink's gateway).
	EBGPMultihopTTL uint8
	// LocalAddress optionally pins the session's source address (and so
	// the next hop announced to this peer).
	LocalAddress netip.Addr
}

// Defaults for zero fields of Peer.
const (
	DefaultHoldTime    = 90 * time.Second
	DefaultRestartTime = 120 * time.Second
	// connectRetry is short because a gateway should be back in the
	// fabric soon after its router restarts; GoBGP's default is 120 s.
	connectRetry = 5 * time.Second
)

// PeerState is what the agent reports for a peer (agentv1.BgpPeerState).
type PeerState struct {
	Address    netip.Addr
	State      string // "idle", "connect", "active", "opensent", "openconfirm", "established"
	Since      time.Time
	Advertised uint32
	Received   uint32
	LastError  string
}

// Speaker is a GoBGP server announcing a declared set of routes to a
// declared set of peers. Its methods are safe for concurrent use.
type Speaker struct {
	cfg Config
	log *slog.Logger
	srv *server.BgpServer

	mu        sync.Mutex // serializes SetPeers/SetRoutes/Stop
	started   bool
	stopped   bool
	peers     map[netip.Addr]Peer
	announced map[netip.Prefix]announcement
	cancel    context.CancelFunc // ends the event watcher
	// batch reaches GoBGP's AddPathStream over a private unix socket: the
	// library API adds one path per call, and each call becomes its own
	// UPDATE, while a stream message is applied at once and its paths are
	// packed into UPDATEs by attributes.
	batch   api.GobgpApiClient
	noBatch bool // tests only: the baseline that sends one path per call
	conn    *grpc.ClientConn
	sockDir string

	smu    sync.Mutex // guards status, written by GoBGP's goroutines
	status map[netip.Addr]*peerStatus
}

type peerStatus struct {
	state     string
	since     time.Time
	lastError string
}

// New checks the configuration; nothing runs until Start.
func New(cfg Config) (*Speaker, error) {
	if cfg.ASN == 0 {
		return nil, errors.New("bgp: local ASN is 0")
	}
	if !cfg.RouterID.Is4() || cfg.RouterID.IsUnspecified() {
		return nil, fmt.Errorf("bgp: router ID %v: want a non-zero IPv4 address", cfg.RouterID)
	}
	if cfg.ListenPort < -1 || cfg.ListenPort > 65535 {
		return nil, fmt.Errorf("bgp: listen port %d out of range", cfg.ListenPort)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Speaker{
		cfg:       cfg,
		log:       log.With("component", "bgp"),
		peers:     map[netip.Addr]Peer{},
		announced: map[netip.Prefix]announcement{},
		status:    map[netip.Addr]*peerStatus{},
	}
	return s, nil
}

// Start runs the GoBGP server. It returns once the server accepts requests.
func (s *Speaker) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("bgp: speaker already started")
	}
	dir, err := os.MkdirTemp("", "meridian-bgp-") // 0700: only root reaches GoBGP's API
	if err != nil {
		return fmt.Errorf("bgp: directory for GoBGP's API socket: %w", err)
	}
	sock := filepath.Join(dir, "gobgp.sock")
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
		// Never go idle: an idle channel drops its connection and could
		// not reconnect to the unlinked socket.
		grpc.WithIdleTimeout(0))
	if err != nil {
		os.RemoveAll(dir)
		return fmt.Errorf("bgp: GoBGP API client: %w", err)
	}
	s.srv = server.NewBgpServer(
		server.LoggerOption(&gobgpLogger{log: s.log, onPeerDown: s.peerDown}),
		server.GrpcListenAddress("unix://"+sock))
	go s.srv.Serve()
	s.conn, s.batch, s.sockDir = conn, api.NewGobgpApiClient(conn), dir
	port := s.cfg.ListenPort
	if port == 0 {
		port = -1
	}
	if err := s.srv.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn:        s.cfg.ASN,
		RouterId:   s.cfg.RouterID.String(),
		ListenPort: port,
	}}); err != nil {
		s.closeAPI()
		return fmt.Errorf("bgp: starting GoBGP (ASN %d, router ID %v): %w", s.cfg.ASN, s.cfg.RouterID, err)
	}
	// Connect now, then unlink the socket: the one connection is all the
	// speaker needs, no other process can reach GoBGP's API, and nothing
	// is left on disk even after a crash.
	if err := connectNow(ctx, conn); err != nil {
		s.closeAPI()
		return fmt.Errorf("bgp: connecting to GoBGP's API socket: %w", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		s.log.Warn("removing GoBGP's API socket directory", "dir", dir, "err", err)
	}
	wctx, cancel := context.WithCancel(context.Background())
	if err := s.srv.WatchEvent(wctx, &api.WatchEventRequest{Peer: &api.WatchEventRequest_Peer{}}, s.peerEvent); err != nil {
		cancel()
		s.closeAPI()
		return fmt.Errorf("bgp: watching peer events: %w", err)
	}
	s.cancel = cancel
	s.started = true
	return nil
}

// Stop closes every session with a Cease NOTIFICATION, so the peers
// withdraw our routes at once (no graceful restart), and ends the server.
// GoBGP's event loop goroutine cannot be ended (its Serve never returns):
// each stopped Speaker leaves that one idle goroutine behind, so an agent
// should keep its speaker and reconfigure it rather than replace it often.
func (s *Speaker) Stop(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.started || s.stopped {
		return nil
	}
	s.stopped = true
	s.cancel()
	err := s.srv.StopBgp(ctx, &api.StopBgpRequest{})
	s.closeAPI()
	if err != nil {
		return fmt.Errorf("bgp: stopping GoBGP: %w", err)
	}
	return nil
}

// connectNow waits until conn is connected.
func connectNow(ctx context.Context, conn *grpc.ClientConn) error {
	conn.Connect()
	for {
		st := conn.GetState()
		if st == connectivity.Ready {
			return nil
		}
		if !conn.WaitForStateChange(ctx, st) {
			return fmt.Errorf("still %v: %w", st, ctx.Err())
		}
	}
}

// closeAPI ends GoBGP (its Stop also sends the Cease) and the API socket.
func (s *Speaker) closeAPI() {
	s.conn.Close()
	s.srv.Stop()
	if err := os.RemoveAll(s.sockDir); err != nil {
		s.log.Warn("removing GoBGP's API socket directory", "dir", s.sockDir, "err", err)
	}
}

func (s *Speaker) ready() error {
	if !s.started {
		return errors.New("bgp: speaker not started")
	}
	if s.stopped {
		return errors.New("bgp: speaker stopped")
	}
	return nil
}

func validatePeer(p Peer) error {
	if !p.Address.IsValid() || p.Address.IsUnspecified() || p.Address.Zone() != "" {
		return fmt.Errorf("peer %v: invalid address", p.Address)
	}
	if p.ASN == 0 {
		return fmt.Errorf("peer %v: ASN is 0", p.Address)
	}
	if p.HoldTime != 0 && (p.HoldTime < 3*time.Second || p.HoldTime > 65535*time.Second) {
		return fmt.Errorf("peer %v: hold time %v: want 0 (90 s) or 3 s..65535 s", p.Address, p.HoldTime)
	}
	if p.RestartTime < 0 || p.RestartTime > 4095*time.Second {
		return fmt.Errorf("peer %v: restart time %v: want 0 (120 s) up to 4095 s", p.Address, p.RestartTime)
	}
	if p.LocalAddress.IsValid() && p.LocalAddress.Is4() != p.Address.Is4() {
		return fmt.Errorf("peer %v: local address %v is of the other family", p.Address, p.LocalAddress)
	}
	return nil
}

// peerRequest is the pure translation of a Peer into GoBGP's.
func peerRequest(localASN uint32, p Peer) *api.Peer {
	hold := p.HoldTime
	if hold == 0 {
		hold = DefaultHoldTime
	}
	restart := p.RestartTime
	if restart == 0 {
		restart = DefaultRestartTime
	}
	out := &api.Peer{
		Conf: &api.PeerConf{
			NeighborAddress: p.Address.String(),
			PeerAsn:         p.ASN,
			LocalAsn:        localASN,
			AuthPassword:    p.Password,
		},
		Timers: &api.Timers{Config: &api.TimersConfig{
			HoldTime:          uint64(hold / time.Second),
			KeepaliveInterval: uint64(hold / time.Second / 3),
			ConnectRetry:      uint64(connectRetry / time.Second),
		}},
		Transport: &api.Transport{RemotePort: 179},
	}
	if p.LocalAddress.IsValid() {
		out.Transport.LocalAddress = p.LocalAddress.String()
	}
	if p.EBGPMultihopTTL > 0 {
		out.EbgpMultihop = &api.EbgpMultihop{Enabled: true, MultihopTtl: uint32(p.EBGPMultihopTTL)}
	}
	if p.GracefulRestart {
		out.GracefulRestart = &api.GracefulRestart{Enabled: true, RestartTime: uint32(restart / time.Second)}
	}
	for _, afi := range []api.Family_Afi{api.Family_AFI_IP, api.Family_AFI_IP6} {
		as := &api.AfiSafi{Config: &api.AfiSafiConfig{
			Family:  &api.Family{Afi: afi, Safi: api.Family_SAFI_UNICAST},
			Enabled: true,
		}}
		if p.GracefulRestart {
			as.MpGracefulRestart = &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: true}}
		}
		out.AfiSafis = append(out.AfiSafis, as)
	}
	return out
}

// SetPeers makes the configured neighbours exactly peers. A new peer gets a
// session, a removed one is closed with a Cease (the peer withdraws our
// routes), and a changed one is re-created, which resets its session: every
// field of Peer is negotiated at OPEN. Bad input changes nothing.
func (s *Speaker) SetPeers(ctx context.Context, peers []Peer) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.ready(); err != nil {
		return err
	}
	want := make(map[netip.Addr]Peer, len(peers))
	for _, p := range peers {
		if err := validatePeer(p); err != nil {
			return fmt.Errorf("bgp: %w", err)
		}
		if _, dup := want[p.Address]; dup {
			return fmt.Errorf("bgp: peer %v listed twice", p.Address)
		}
		want[p.Address] = p
	}
	for _, addr := range sortedAddrs(s.peers) {
		if np, ok := want[addr]; ok && np == s.peers[addr] {
			continue
		}
		if err := s.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: addr.String()}); err != nil {
			return fmt.Errorf("bgp: removing peer %v: %w", addr, err)
		}
		delete(s.peers, addr)
		s.smu.Lock()
		delete(s.status, addr)
		s.smu.Unlock()
		s.log.Info("peer removed", "peer", addr)
	}
	for _, addr := range sortedAddrs(want) {
		if _, ok := s.peers[addr]; ok {
			continue
		}
		p := want[addr]
		s.smu.Lock()
		s.status[addr] = &peerStatus{state: "idle", since: time.Now()}
		s.smu.Unlock()
		if err := s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: peerRequest(s.cfg.ASN, p)}); err != nil {
			s.smu.Lock()
			delete(s.status, addr)
			s.smu.Unlock()
			return fmt.Errorf("bgp: adding peer %v (AS %d): %w", addr, p.ASN, err)
		}
		s.peers[addr] = p
		s.log.Info("peer added", "peer", addr, "asn", p.ASN, "graceful_restart", p.GracefulRestart)
	}
	return nil
}

// SetRoutes makes the announced routes exactly routes: it announces new or
// changed prefixes and withdraws the ones no longer listed, one UPDATE per
// change; unchanged prefixes are not sent again. Every route is checked
// first: one bad route fails the call and nothing is announced or
// withdrawn.
func (s *Speaker) SetRoutes(ctx context.Context, routes []Route) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.ready(); err != nil {
		return err
	}
	p, err := diffRoutes(s.announced, routes)
	if err != nil {
		return fmt.Errorf("bgp: %w", err)
	}
	// One change (an elastic IP associated or released) goes through the
	// library call, the shortest way to the wire; more go as one batch.
	batched := false
	if len(p.withdraw)+len(p.announce) > 1 && !s.noBatch {
		err := s.sendBatch(ctx, p)
		switch {
		case err == nil:
			batched = true
		case errors.Is(err, errNoStream):
			// Nothing was applied: fall back to one call per change.
			s.log.Warn("GoBGP's path stream unavailable, sending paths one by one", "err", err)
		default:
			return err
		}
	}
	if !batched {
		for _, a := range p.withdraw {
			if err := s.srv.DeletePath(ctx, &api.DeletePathRequest{TableType: api.TableType_GLOBAL, Family: a.path.Family, Path: a.path}); err != nil {
				return fmt.Errorf("bgp: withdrawing %v: %w", a.route.Prefix, err)
			}
			delete(s.announced, a.route.Prefix)
		}
		for _, a := range p.announce {
			if _, err := s.srv.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: a.path}); err != nil {
				return fmt.Errorf("bgp: announcing %v: %w", a.route.Prefix, err)
			}
			s.announced[a.route.Prefix] = a
		}
	}
	// Unchanged routes may come with a new spelling of their communities;
	// remember the latest so the next call compares against it cheaply.
	for _, a := range p.respelled {
		s.announced[a.route.Prefix] = a
	}
	if len(p.withdraw)+len(p.announce) > 0 {
		s.log.Debug("routes updated", "announced", len(p.announce), "withdrawn", len(p.withdraw), "total", len(s.announced))
	}
	return nil
}

// Routes returns what is announced, sorted by prefix.
func (s *Speaker) Routes() []netip.Prefix {
	s.mu.Lock()
	defer s.mu.Unlock()
	return sortedPrefixes(s.announced)
}

// PeerStates reports every configured peer, sorted by address.
func (s *Speaker) PeerStates(ctx context.Context) ([]PeerState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.ready(); err != nil {
		return nil, err
	}
	counts := map[netip.Addr][2]uint32{}
	err := s.srv.ListPeer(ctx, &api.ListPeerRequest{EnableAdvertised: true}, func(p *api.Peer) {
		addr, err := netip.ParseAddr(p.GetConf().GetNeighborAddress())
		if err != nil {
			return
		}
		var adv, rcv uint64
		for _, as := range p.GetAfiSafis() {
			adv += as.GetState().GetAdvertised()
			rcv += as.GetState().GetReceived()
		}
		counts[addr] = [2]uint32{uint32(adv), uint32(rcv)}
	})
	if err != nil {
		return nil, fmt.Errorf("bgp: listing peers: %w", err)
	}
	s.smu.Lock()
	defer s.smu.Unlock()
	out := make([]PeerState, 0, len(s.peers))
	for _, addr := range sortedAddrs(s.peers) {
		st := PeerState{Address: addr, State: "idle"}
		if ps := s.status[addr]; ps != nil {
			st.State, st.Since, st.LastError = ps.state, ps.since, ps.lastError
		}
		c := counts[addr]
		st.Advertised, st.Received = c[0], c[1]
		out = append(out, st)
	}
	return out, nil
}

// peerEvent records state transitions as GoBGP reports them, so "since" is
// when the state was entered, not when it was asked for.
func (s *Speaker) peerEvent(ev *api.WatchEventResponse) {
	pe := ev.GetPeer()
	if pe == nil || pe.Type != api.WatchEventResponse_PeerEvent_STATE {
		return
	}
	addr, err := netip.ParseAddr(pe.GetPeer().GetState().GetNeighborAddress())
	if err != nil {
		return
	}
	state := sessionState(pe.GetPeer().GetState().GetSessionState())
	s.smu.Lock()
	defer s.smu.Unlock()
	ps := s.status[addr]
	if ps == nil || ps.state == state {
		return
	}
	ps.state, ps.since = state, time.Now()
}

// peerDown is called by the logger adapter: GoBGP reports why a session
// ended only in its log.
func (s *Speaker) peerDown(addr netip.Addr, reason string) {
	s.smu.Lock()
	defer s.smu.Unlock()
	if ps := s.status[addr]; ps != nil {
		ps.lastError = reason
	}
}

func sessionState(st api.PeerState_SessionState) string {
	if st == api.PeerState_UNKNOWN {
		return "idle"
	}
	return strings.ToLower(st.String())
}

func sortedAddrs[V any](m map[netip.Addr]V) []netip.Addr {
	out := make([]netip.Addr, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}
