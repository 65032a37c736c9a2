package distributor_test

import (
	"github.com/meridian-sdn/meridian/controller"
	"github.com/meridian-sdn/meridian/controller/distributor"
)

// The distributor is what the controller plugs in as its Agents.
var _ controller.Agents = (*distributor.Distributor)(nil)
