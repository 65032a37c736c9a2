package ovn

import (
	"reflect"

	"github.com/google/uuid"
	"github.com/ovn-kubernetes/libovsdb/model"
)

func reflectPtr(s string) reflect.Value { return reflect.ValueOf(&s) }

// reflectZero is an empty model of the table.
func reflectZero(s *tableSpec) model.Model { return reflect.New(s.typ).Interface().(model.Model) }

// isRealUUID tells committed rows from named UUIDs of this pass.
func isRealUUID(s string) bool { return uuid.Validate(s) == nil }
