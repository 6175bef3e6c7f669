// Refused properties for vcsim: a vCenter user without System.Read on a VM still sees the VM in a
// container view, but RetrieveProperties answers each requested property in missingSet with a
// NoPermission fault instead of propSet; govmomi 0.24's simulator lets its one user read everything.
package main

import (
	"reflect"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// denyPrefix, when set, refuses VMs whose name starts with it (checked at every call, so renaming
// a VM grants or revokes); denyPaths, when set, refuses only those properties of them (see refusedPath).
var (
	denyPrefix string
	denyPaths  map[string]bool
)

func setDenyPaths(list string) {
	for _, p := range strings.Split(list, ",") {
		if p = strings.TrimSpace(p); p != "" {
			if denyPaths == nil {
				denyPaths = map[string]bool{}
			}
			denyPaths[p] = true
		}
	}
}

// vmPaths: the properties asked of VirtualMachine objects (or of a supertype), and whether all were.
func vmPaths(specs []types.PropertyFilterSpec) ([]string, bool) {
	var paths []string
	all := false
	for _, s := range specs {
		for _, p := range s.PropSet {
			switch p.Type {
			case "VirtualMachine", "ManagedEntity", "ExtensibleManagedObject":
				paths = append(paths, p.PathSet...)
				all = all || (p.All != nil && *p.All)
			}
		}
	}
	return paths, all
}

// refusedPath: a denied path, or a property containing one ("runtime" when "runtime.powerState"
// is denied: pyVmomi reads the whole "runtime"), or one of its parts.
func refusedPath(p string) bool {
	if denyPaths == nil || denyPaths[p] {
		return true
	}
	for d := range denyPaths {
		if strings.HasPrefix(d, p+".") || strings.HasPrefix(p, d+".") {
			return true
		}
	}
	return false
}

func noPermission(ref types.ManagedObjectReference) *types.NoPermission {
	return &types.NoPermission{Object: ref, PrivilegeId: "System.Read"}
}

const deniedMessage = "Permission to perform this operation was denied."

func refused(ctx *simulator.Context, ref types.ManagedObjectReference) bool {
	if ref.Type != "VirtualMachine" {
		return false
	}
	obj := ctx.Map.Get(ref)
	e, ok := obj.(mo.Entity)
	if !ok {
		return false
	}
	var name string
	ctx.WithLock(obj, func() { name = e.Entity().Name })
	return strings.HasPrefix(name, denyPrefix)
}

// deny rewrites the answer in place: the refused properties of refused VMs move from propSet to
// missingSet, one NoPermission per requested path (also the unset ones vcsim leaves out of propSet).
func deny(ctx *simulator.Context, specs []types.PropertyFilterSpec, objects []types.ObjectContent) {
	if denyPrefix == "" {
		return
	}
	paths, all := vmPaths(specs)
	for i := range objects {
		o := &objects[i]
		if !refused(ctx, o.Obj) {
			continue
		}
		asked := append([]string(nil), paths...)
		if all {
			for _, p := range o.PropSet {
				asked = append(asked, p.Name)
			}
		}
		drop := map[string]bool{}
		for _, p := range asked {
			if refusedPath(p) {
				drop[p] = true
			}
		}
		kept := o.PropSet[:0]
		for _, p := range o.PropSet {
			if !drop[p.Name] {
				kept = append(kept, p)
			}
		}
		o.PropSet = kept
		missing := o.MissingSet[:0]
		for _, m := range o.MissingSet {
			if !drop[m.Path] {
				missing = append(missing, m)
			}
		}
		for _, p := range asked {
			if drop[p] {
				delete(drop, p) // a path asked twice is refused once
				missing = append(missing, types.MissingProperty{Path: p, Fault: types.LocalizedMethodFault{
					Fault: noPermission(o.Obj), LocalizedMessage: deniedMessage,
				}})
			}
		}
		o.MissingSet = missing
	}
}

// fetchReq has the shape of vcsim's internal Fetch request: pyVmomi reads one property with this
// undocumented method, which vcsim answers from the embedded collector (bypassing deny).
// Registering our type under its name routes it to PagingCollector.Fetch, which refuses first.
type fetchReq struct {
	This types.ManagedObjectReference `xml:"_this"`
	Prop string                       `xml:"prop"`
}

type fetchFault struct {
	Fault_ *soap.Fault `xml:"http://schemas.xmlsoap.org/soap/envelope/ Fault,omitempty"`
}

func (b *fetchFault) Fault() *soap.Fault { return b.Fault_ }

func init() {
	types.Add("Fetch", reflect.TypeOf((*fetchReq)(nil)).Elem())
}

// Fetch refuses a refused property with the fault itself, as vCenter does for a single read.
func (pc *PagingCollector) Fetch(ctx *simulator.Context, req *fetchReq) soap.HasFault {
	if denyPrefix != "" && refusedPath(req.Prop) && refused(ctx, req.This) {
		return &fetchFault{simulator.Fault(deniedMessage, noPermission(req.This))}
	}
	// the embedded Fetch takes vcsim's internal type, which has the same fields as fetchReq
	orig := reflect.ValueOf(&pc.PropertyCollector).MethodByName("Fetch")
	arg := reflect.ValueOf(req).Convert(orig.Type().In(1))
	return orig.Call([]reflect.Value{reflect.ValueOf(ctx), arg})[0].Interface().(soap.HasFault)
}
