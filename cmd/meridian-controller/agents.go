package main

import (
	"log/slog"

	"github.com/meridian-sdn/meridian/controller"
	"github.com/meridian-sdn/meridian/controller/distributor"
	"github.com/meridian-sdn/meridian/controller/store"
)

// newAgents builds the agent distributor. Agents authenticate like every
// caller; only system-administrator identities (node credentials) may sync.
func newAgents(st store.Store, log *slog.Logger) (controller.Agents, error) {
	return distributor.New(distributor.Config{Store: st, Logger: log, Authorize: distributor.SystemAdminOnly})
}
