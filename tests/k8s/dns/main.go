// Command coredns is a cut-down CoreDNS for the pytest-aikernel test cluster
// (tests/k8s/cluster). It links only the plugins that cluster needs: the
// kubernetes plugin (answers for cluster.local from the API server), a few
// helpers, and template (used to answer NXDOMAIN for every name outside the
// cluster zones). There is deliberately no forward plugin: the test cluster
// must not resolve or reach anything outside itself.
//
// Build with ./build; see README.md.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	// Each import registers its plugin with the server type in init().
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/template"
)

// directives is the subset of CoreDNS's plugin.cfg that this binary knows,
// in the same relative order as upstream (the order decides the position of
// each plugin in the request chain, not the order in the Corefile).
var directives = []string{
	"bind",
	"ready",
	"health",
	"errors",
	"log",
	"cache",
	"template",
	"kubernetes",
}

func main() {
	dnsserver.Directives = directives
	coremain.Run()
}
