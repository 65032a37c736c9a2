package ovntest

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/ovn-kubernetes/libovsdb/database/inmemory"
	"github.com/ovn-kubernetes/libovsdb/model"
	"github.com/ovn-kubernetes/libovsdb/server"

	"github.com/meridian-sdn/meridian/controller/ovn/nbdb"
)

// InMemoryNB serves an empty northbound database from libovsdb's in-memory
// OVSDB server on a private unix socket and returns its endpoint
// ("unix:/..."). It is stopped in t.Cleanup. No OVN binaries are needed.
func InMemoryNB(t testing.TB) string {
	t.Helper()
	clientModel, err := nbdb.FullDatabaseModel()
	if err != nil {
		t.Fatalf("ovntest: NB model: %v", err)
	}
	dbModel, errs := model.NewDatabaseModel(nbdb.Schema(), clientModel)
	if len(errs) > 0 {
		t.Fatalf("ovntest: NB database model: %v", errs)
	}
	lg := logr.Discard()
	db := inmemory.NewDatabase(map[string]model.ClientDBModel{nbdb.Schema().Name: clientModel}, &lg)
	srv, err := server.NewOvsdbServer(db, &lg, dbModel)
	if err != nil {
		t.Fatalf("ovntest: in-memory OVSDB server: %v", err)
	}
	dir, err := os.MkdirTemp("", "mer-nbmem-")
	if err != nil {
		t.Fatalf("ovntest: %v", err)
	}
	sock := filepath.Join(dir, "nb.sock")
	served := make(chan error, 1)
	go func() { served <- srv.Serve("unix", sock) }()
	t.Cleanup(func() {
		srv.Close()
		<-served
		os.RemoveAll(dir)
	})
	deadline := time.Now().Add(startTimeout)
	for !srv.Ready() {
		select {
		case err := <-served:
			t.Fatalf("ovntest: in-memory OVSDB server on %s: %v", sock, err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("ovntest: in-memory OVSDB server on %s not ready after %v", sock, startTimeout)
		}
		time.Sleep(time.Millisecond)
	}
	return "unix:" + sock
}
