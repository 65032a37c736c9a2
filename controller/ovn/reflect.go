package ovn

import (
	"reflect"

	"github.com/ovn-kubernetes/libovsdb/model"
)

func reflectPtr(s string) reflect.Value { return reflect.ValueOf(&s) }

// reflectZero is an empty model of the table.
func reflectZero(s *tableSpec) model.Model { return reflect.New(s.typ).Interface().(model.Model) }
