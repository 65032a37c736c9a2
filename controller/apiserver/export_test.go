package apiserver

import "github.com/meridian-sdn/meridian/controller/resource"

// ParseFilter exposes the list filter parser to the external tests.
func ParseFilter(k *resource.Kind, text string) error {
	_, err := parseFilter(k, text)
	return err
}
