package bgp

import (
	"context"
	"errors"
	"fmt"

	api "github.com/osrg/gobgp/v3/api"
	"google.golang.org/protobuf/proto"
)

// errNoStream: the stream could not be opened, so nothing was applied.
var errNoStream = errors.New("GoBGP's path stream could not be opened")

// batchSize keeps each stream message far below gRPC's 4 MiB limit.
const batchSize = 1000

// sendBatch applies a plan through GoBGP's AddPathStream: withdrawals first
// (as withdrawn paths), then announcements, batchSize paths per message.
// GoBGP applies each message as a whole and packs its paths into UPDATEs by
// attributes, where AddPath sends one UPDATE per call.
func (s *Speaker) sendBatch(ctx context.Context, p plan) error {
	stream, err := s.batch.AddPathStream(ctx)
	if err != nil {
		return fmt.Errorf("bgp: %w: %w", errNoStream, err)
	}
	all := make([]announcement, 0, len(p.withdraw)+len(p.announce))
	all = append(all, p.withdraw...)
	all = append(all, p.announce...)
	nw := len(p.withdraw)
	for start := 0; start < len(all); start += batchSize {
		chunk := all[start:min(start+batchSize, len(all))]
		req := &api.AddPathStreamRequest{TableType: api.TableType_GLOBAL, Paths: make([]*api.Path, len(chunk))}
		for i, a := range chunk {
			path := a.path
			if start+i < nw {
				path = proto.Clone(a.path).(*api.Path)
				path.IsWithdraw = true
			}
			req.Paths[i] = path
		}
		if err := stream.Send(req); err != nil {
			_, rerr := stream.CloseAndRecv() // the server's reason, if any
			return fmt.Errorf("bgp: sending %d paths to GoBGP: %w", len(chunk), errors.Join(err, rerr))
		}
	}
	// GoBGP answers once it has applied every message.
	if _, err := stream.CloseAndRecv(); err != nil {
		return fmt.Errorf("bgp: applying %d path changes: %w", len(all), err)
	}
	for _, a := range p.withdraw {
		delete(s.announced, a.route.Prefix)
	}
	for _, a := range p.announce {
		s.announced[a.route.Prefix] = a
	}
	return nil
}
