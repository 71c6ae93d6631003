package wire

import (
	"embed"
	"fmt"
)

//go:generate sh -c "mkdir -p ../../docs/schemas/examples && cp schemas/*.schema.json ../../docs/schemas/ && cp schemas/examples/*.json ../../docs/schemas/examples/"

// Schemas holds the canonical JSON Schemas (draft 2020-12), one per payload,
// as schemas/<kind>.schema.json, and example payloads in schemas/examples/.
//
//go:embed schemas/*.schema.json schemas/examples/*.json
var Schemas embed.FS

// SchemaNames lists the payloads that have a schema.
// (the current version; status.v1 and summary.v1 are kept beside them).
var SchemaNames = []string{"status", "state", "summary", "alert", "command", "signed_command", "reply", "status.v1", "summary.v1"}

// Schema returns the JSON Schema of one payload kind, e.g. "alert".
func Schema(name string) ([]byte, error) {
	b, err := Schemas.ReadFile("schemas/" + name + ".schema.json")
	if err != nil {
		return nil, fmt.Errorf("schema %q: %w", name, err)
	}
	return b, nil
}
