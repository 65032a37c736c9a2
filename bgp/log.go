package bgp

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"

	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
)

// gobgpLogger sends GoBGP's log to slog. GoBGP's Fatal and Panic levels are
// logged as errors: an embedded library must not end the agent.
type gobgpLogger struct {
	log        *slog.Logger
	onPeerDown func(netip.Addr, string)
}

func (l *gobgpLogger) emit(level slog.Level, msg string, fields gobgplog.Fields) {
	if msg == "Peer Down" && l.onPeerDown != nil {
		if key, ok := fields["Key"].(string); ok {
			if addr, err := netip.ParseAddr(key); err == nil {
				l.onPeerDown(addr, fmt.Sprint(fields["Reason"]))
			}
		}
	}
	ctx := context.Background()
	if !l.log.Enabled(ctx, level) {
		return
	}
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	attrs := make([]slog.Attr, 0, len(keys))
	for _, k := range keys {
		attrs = append(attrs, slog.Any(k, fields[k]))
	}
	l.log.LogAttrs(ctx, level, "gobgp: "+msg, attrs...)
}

func (l *gobgpLogger) Panic(msg string, f gobgplog.Fields) { l.emit(slog.LevelError, msg, f) }
func (l *gobgpLogger) Fatal(msg string, f gobgplog.Fields) { l.emit(slog.LevelError, msg, f) }
func (l *gobgpLogger) Error(msg string, f gobgplog.Fields) { l.emit(slog.LevelError, msg, f) }
func (l *gobgpLogger) Warn(msg string, f gobgplog.Fields)  { l.emit(slog.LevelWarn, msg, f) }
func (l *gobgpLogger) Info(msg string, f gobgplog.Fields)  { l.emit(slog.LevelInfo, msg, f) }
func (l *gobgpLogger) Debug(msg string, f gobgplog.Fields) { l.emit(slog.LevelDebug, msg, f) }

// SetLevel is ignored: the slog handler decides what is kept.
func (l *gobgpLogger) SetLevel(gobgplog.LogLevel) {}

// GetLevel lets GoBGP skip building debug messages nobody will see.
func (l *gobgpLogger) GetLevel() gobgplog.LogLevel {
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		return gobgplog.DebugLevel
	}
	return gobgplog.InfoLevel
}
