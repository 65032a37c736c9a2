package ctl

import (
	"testing"

	"github.com/meridian-sdn/meridian/controller/resource"
)

// TestKindTable checks every row against the API: the table is data, so a
// typo would otherwise surface only when a user runs that command.
func TestKindTable(t *testing.T) {
	ks := kinds(kindTable())
	if len(ks) != len(resource.Kinds()) {
		t.Fatalf("%d kinds in the table, %d in the API", len(ks), len(resource.Kinds()))
	}
	for i, k := range ks {
		if order(k) != i {
			t.Errorf("%s is row %d, dependency position %d", k.Name, i, order(k))
		}
		for _, verb := range []string{"Create", "Get", "List", "Update", "Delete"} {
			md, err := methodFor(k, verb)
			if err != nil {
				t.Error(err)
				continue
			}
			switch verb {
			case "Create", "Update":
				if _, err := resourceField(md.Input(), k); err != nil {
					t.Error(err)
				}
			case "List":
				if _, err := resourceField(md.Output(), k); err != nil {
					t.Error(err)
				}
			}
		}
		md := k.New().ProtoReflect().Descriptor()
		for _, f := range k.Flags {
			if md.Fields().ByName(f.Field) == nil {
				t.Errorf("%s --%s: no field %s", k.Name, f.Name, f.Field)
			}
		}
		for _, c := range k.Columns {
			if got := fieldText(k.New().ProtoReflect(), c.Path, c.Count); got == "?" {
				t.Errorf("%s column %s: bad path %s", k.Name, c.Header, c.Path)
			}
		}
		for _, name := range append([]string{k.Command, k.Name, k.Collection}, k.Aliases...) {
			got, err := ks.lookup(name)
			if err != nil || got != k {
				t.Errorf("lookup(%q) = %v, %v; want %s", name, got, err, k.Name)
			}
		}
	}
	if _, err := ks.lookup("sg"); err != nil {
		t.Error(err)
	}
	if _, err := ks.lookup("vnet"); err == nil {
		t.Error("lookup(vnet) found a kind")
	}
}

func TestResolveConfig(t *testing.T) {
	file := Config{Endpoint: "file:1", Token: "file-token"}
	env := map[string]string{}
	getenv := func(k string) string { return env[k] }
	if c := resolve(Config{}, getenv, "", ""); c.Endpoint != DefaultEndpoint || c.Token != "" {
		t.Errorf("defaults: %+v", c)
	}
	if c := resolve(file, getenv, "", ""); c.Endpoint != "file:1" || c.Token != "file-token" {
		t.Errorf("file: %+v", c)
	}
	env["MERIDIAN_ENDPOINT"], env["MERIDIAN_TOKEN"] = "env:2", "env-token"
	if c := resolve(file, getenv, "", ""); c.Endpoint != "env:2" || c.Token != "env-token" {
		t.Errorf("env over file: %+v", c)
	}
	if c := resolve(file, getenv, "flag:3", "flag-token"); c.Endpoint != "flag:3" || c.Token != "flag-token" {
		t.Errorf("flags over env: %+v", c)
	}
}
