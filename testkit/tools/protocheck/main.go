// protocheck reads a Prometheus protobuf exposition (delimited io.prometheus.client.MetricFamily
// messages) on standard input with Prometheus' own Go decoder (github.com/prometheus/common/expfmt,
// client_model's Go types, as a Prometheus server's scrape decodes it), and prints each family as
// one line of JSON, native histogram fields included. It exits 1 on a decoding error.
//
// The tests build it with Debian's golang-go and Go Prometheus libraries (testkit/expfmt.py).
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

func main() {
	dec := expfmt.NewDecoder(bufio.NewReader(os.Stdin), expfmt.FmtProtoDelim)
	out := json.NewEncoder(os.Stdout)
	for {
		var mf dto.MetricFamily
		if err := dec.Decode(&mf); err != nil {
			if err == io.EOF {
				return
			}
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if err := out.Encode(&mf); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
}
