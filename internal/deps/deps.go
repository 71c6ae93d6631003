//go:build tools

// Package deps pins the modules the project builds on so that `go mod tidy`
// keeps them while packages are still being written.
package deps

import (
	_ "github.com/eclipse/paho.mqtt.golang"
	_ "github.com/mochi-mqtt/server/v2"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/santhosh-tekuri/jsonschema/v6"
	_ "github.com/schollz/progressbar/v3"
	_ "go.etcd.io/bbolt"
	_ "gocv.io/x/gocv"
	_ "golang.org/x/term"
	_ "google.golang.org/protobuf/encoding/protowire"
	_ "gopkg.in/yaml.v3"
	_ "periph.io/x/conn/v3/gpio"
	_ "periph.io/x/host/v3"
)
