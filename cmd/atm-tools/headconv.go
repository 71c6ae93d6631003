package main

import (
	"context"
	"fmt"
	"os"

	"github.com/periocular/atm-agent/agent/vision"
	"github.com/periocular/atm-agent/internal/cli"
)

func init() {
	commands["convert-head"] = cli.Command{Summary: "rewrite a JSON projection head as float32 binary (what train-heads writes now)", Run: convertHead}
}

// convertHead reads a projection head (JSON or binary) and writes it in the
// binary form; the values are the same float32s.
func convertHead(_ context.Context, env *cli.Env, args []string) error {
	fs := cli.NewFlags(env, "convert-head", "convert-head IN.json OUT.f32")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		fs.Usage()
		return cli.ErrUsage
	}
	in, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return err
	}
	p, err := vision.DecodeProjection(in)
	if err != nil {
		return fmt.Errorf("%s: %w", fs.Arg(0), err)
	}
	out, err := vision.EncodeProjection(p)
	if err != nil {
		return err
	}
	if err := os.WriteFile(fs.Arg(1), out, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "%s: %d bytes -> %s: %d bytes\n", fs.Arg(0), len(in), fs.Arg(1), len(out))
	return nil
}
