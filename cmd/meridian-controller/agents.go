package main

import (
	"log/slog"

	"github.com/meridian-sdn/meridian/controller"
	"github.com/meridian-sdn/meridian/controller/store"
)

// newAgents builds the agent distributor. Until it is wired, the controller
// serves the API alone.
func newAgents(store.Store, *slog.Logger) (controller.Agents, error) { return nil, nil }
