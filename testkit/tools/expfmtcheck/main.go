// expfmtcheck reads a Prometheus text exposition on standard input and parses it with
// Prometheus' own Go parser (github.com/prometheus/common/expfmt), as a Prometheus server's
// scrape does. It prints the families it read, or the parser's error, and exits 1 on an error.
//
// The tests build it with Debian's golang-go and golang-github-prometheus-common-dev (GOPATH
// mode, GO111MODULE=off): see tests/tools/go.py.
package main

import (
	"fmt"
	"os"

	"github.com/prometheus/common/expfmt"
)

func main() {
	var parser expfmt.TextParser
	families, err := parser.TextToMetricFamilies(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	series := 0
	for _, mf := range families {
		series += len(mf.GetMetric())
	}
	fmt.Printf("%d families, %d metrics\n", len(families), series)
}
