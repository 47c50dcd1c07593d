// Command rig-kube runs one upstream Kubernetes component, or etcd, chosen by the name it was
// started as (a symlink: kubelet, kube-apiserver, ...) or by its first argument
// (`rig-kube kubelet --config ...`), the way hyperkube and k3s ship one binary.
//
// Each entry calls the same constructor and runner as the component's own main package in
// k8s.io/kubernetes (or etcd's etcdmain), so the code that runs is upstream's: this file only
// dispatches. The binary is for nginx-drain's tests; it is never shipped.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	_ "time/tzdata" // CronJob time zones, as kube-apiserver and kube-controller-manager embed them

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"          // --logging-format=json
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go's metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // the version metric
	kubectl "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

// cobraMain runs a component whose upstream main is `os.Exit(cli.Run(cmd))`.
func cobraMain(newCommand func() *cobra.Command) func() int {
	return func() int { return cli.Run(newCommand()) }
}

var components = map[string]func() int{
	"kubelet": cobraMain(func() *cobra.Command {
		return kubelet.NewKubeletCommand(context.Background())
	}),
	"kube-apiserver":          cobraMain(apiserver.NewAPIServerCommand),
	"kube-controller-manager": cobraMain(controllermanager.NewControllerManagerCommand),
	"kube-scheduler": cobraMain(func() *cobra.Command {
		return scheduler.NewSchedulerCommand()
	}),
	"kube-proxy": cobraMain(proxy.NewProxyCommand),
	"kubectl": func() int {
		logs.GlogSetter(kubectl.GetLogVerbosity(os.Args)) //nolint:errcheck // as upstream's main
		if err := cli.RunNoErrOutput(kubectl.NewDefaultKubectlCommand()); err != nil {
			kubectlutil.CheckErr(err)
		}
		return 0
	},
	"etcd": func() int {
		etcdmain.Main(singleMemberDefaults(os.Args))
		return 0
	},
}

// singleMemberDefaults completes etcd's flags for one member on loopback, as a bare `etcd` would
// run: since 3.6 it refuses --listen-client-urls without --advertise-client-urls (and the same for
// peers), so each missing advertise flag takes its listen flag's value, and the initial cluster is
// this one member.
func singleMemberDefaults(args []string) []string {
	out := append([]string(nil), args...)
	value := func(name string) (string, bool) {
		for i, a := range out {
			if v, ok := strings.CutPrefix(a, name+"="); ok {
				return v, true
			}
			if a == name && i+1 < len(out) {
				return out[i+1], true
			}
		}
		return "", false
	}
	for _, f := range [][2]string{
		{"--listen-client-urls", "--advertise-client-urls"},
		{"--listen-peer-urls", "--initial-advertise-peer-urls"},
	} {
		if v, ok := value(f[0]); ok {
			if _, set := value(f[1]); !set {
				out = append(out, f[1]+"="+v)
			}
		}
	}
	if peers, ok := value("--initial-advertise-peer-urls"); ok {
		if _, set := value("--initial-cluster"); !set {
			name, named := value("--name")
			if !named {
				name = "default"
			}
			out = append(out, "--initial-cluster="+name+"="+peers)
		}
	}
	return out
}

func names() string {
	n := make([]string, 0, len(components))
	for k := range components {
		n = append(n, k)
	}
	sort.Strings(n)
	return strings.Join(n, ", ")
}

func main() {
	name := filepath.Base(os.Args[0])
	if _, ok := components[name]; !ok {
		if len(os.Args) < 2 {
			fmt.Fprintf(os.Stderr, "usage: rig-kube COMPONENT [ARGS...] (or a symlink named COMPONENT)\ncomponents: %s\n", names())
			os.Exit(2)
		}
		name = os.Args[1]
		// The component sees itself as if started under its own name.
		os.Args = append([]string{name}, os.Args[2:]...)
	}
	run, ok := components[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "rig-kube: no component %q; components: %s\n", name, names())
		os.Exit(2)
	}
	os.Exit(run())
}
