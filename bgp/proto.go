package bgp

import agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"

// Proto converts a peer's state into what the agent reports in its
// NodeReport; peerID is the BgpPeer object's ID, which the speaker does not
// know.
func (p PeerState) Proto(peerID uint32) *agentv1.BgpPeerState {
	out := &agentv1.BgpPeerState{
		PeerId:      peerID,
		PeerAddress: p.Address.String(),
		State:       p.State,
		Advertised:  p.Advertised,
		Received:    p.Received,
		LastError:   p.LastError,
	}
	if !p.Since.IsZero() {
		out.SinceUnix = p.Since.Unix()
	}
	return out
}
