// vcsim for the TR7 adapter tests: a govmomi VPX simulator on 127.0.0.1, URL printed as JSON.
package main

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/simulator/vpx"
	"github.com/vmware/govmomi/vim25/types"
)

func main() {
	vms := flag.Int("vm", 4, "virtual machines (all in one cluster)")
	hosts := flag.Int("host", 2, "ESXi hosts in the cluster")
	user := flag.String("user", "tr7", "login user name")
	pass := flag.String("pass", "secret", "login password")
	certFile := flag.String("cert", "", "serve https with this PEM certificate chain (and -key)")
	keyFile := flag.String("key", "", "PEM private key of -cert")
	flag.IntVar(&pageCap, "page", 0, "PropertyCollector page size cap (0: honour maxObjects only)")
	flag.StringVar(&denyPrefix, "deny", "", "refuse the properties of VMs whose name starts with this "+
		"(missingSet NoPermission, as vCenter for a VM without System.Read)")
	denyList := flag.String("deny-path", "", "with -deny: refuse only these comma-separated properties")
	lost := flag.String("disconnected", "", "comma-separated VM names whose runtime.connectionState is "+
		"disconnected, as vCenter marks the VMs of a host that stopped answering (their powerState "+
		"stays the last one known)")
	flag.Parse()
	setDenyPaths(*denyList)

	model := simulator.VPX()
	model.Host, model.ClusterHost, model.Machine = 0, *hosts, *vms
	if err := model.Create(); err != nil {
		panic(err)
	}
	defer model.Remove()
	for _, name := range strings.Split(*lost, ",") {
		for _, e := range simulator.Map.All("VirtualMachine") {
			if vm := e.(*simulator.VirtualMachine); name != "" && vm.Name == name {
				vm.Runtime.ConnectionState = types.VirtualMachineConnectionStateDisconnected
			}
		}
	}
	pc := &PagingCollector{}
	pc.Self = vpx.ServiceContent.PropertyCollector
	simulator.Map.Put(pc)
	model.Service.Listen = &url.URL{Host: "127.0.0.1:0", User: url.UserPassword(*user, *pass)}
	if *certFile != "" {
		cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			panic(err)
		}
		model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	}
	server := model.Service.NewServer()
	defer server.Close()
	out := map[string]string{"url": server.URL.Scheme + "://" + server.URL.Host + server.URL.Path}
	_ = json.NewEncoder(os.Stdout).Encode(out)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
