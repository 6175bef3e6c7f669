// Paging for vcsim's PropertyCollector: vCenter returns at most RetrieveOptions.maxObjects objects
// and a token for ContinueRetrievePropertiesEx; govmomi 0.24's simulator ignores maxObjects.
package main

import (
	"strconv"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// pageCap, when > 0, makes pages smaller than asked, as a busy vCenter may.
var pageCap int

// PagingCollector embeds by value: the simulator clones it per session with reflect.New.
type PagingCollector struct {
	simulator.PropertyCollector
	mu    sync.Mutex
	next  int
	pages map[string]pending
}

type pending struct {
	rest  []types.ObjectContent
	limit int
}

func (pc *PagingCollector) page(rest []types.ObjectContent, limit int) types.RetrieveResult {
	if limit <= 0 || len(rest) <= limit {
		return types.RetrieveResult{Objects: rest}
	}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.pages == nil {
		pc.pages = map[string]pending{}
	}
	pc.next++
	token := strconv.Itoa(pc.next)
	pc.pages[token] = pending{rest[limit:], limit}
	return types.RetrieveResult{Token: token, Objects: rest[:limit]}
}

func (pc *PagingCollector) limit(asked int32) int {
	if pageCap > 0 && (asked <= 0 || int(asked) > pageCap) {
		return pageCap
	}
	return int(asked)
}

func (pc *PagingCollector) RetrievePropertiesEx(ctx *simulator.Context, r *types.RetrievePropertiesEx) soap.HasFault {
	body := pc.PropertyCollector.RetrievePropertiesEx(ctx, r).(*methods.RetrievePropertiesExBody)
	if body.Res != nil && body.Res.Returnval != nil {
		deny(ctx, r.SpecSet, body.Res.Returnval.Objects)
		res := pc.page(body.Res.Returnval.Objects, pc.limit(r.Options.MaxObjects))
		body.Res.Returnval = &res
	}
	return body
}

// RetrieveProperties (pyVmomi's property reads) refuses like RetrievePropertiesEx; the embedded
// one would call the embedded RetrievePropertiesEx and bypass deny.
func (pc *PagingCollector) RetrieveProperties(ctx *simulator.Context, r *types.RetrieveProperties) soap.HasFault {
	body := pc.PropertyCollector.RetrieveProperties(ctx, r).(*methods.RetrievePropertiesBody)
	if body.Res != nil {
		deny(ctx, r.SpecSet, body.Res.Returnval)
	}
	return body
}

func (pc *PagingCollector) take(token string) (pending, bool) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	p, ok := pc.pages[token]
	delete(pc.pages, token)
	return p, ok
}

func (pc *PagingCollector) ContinueRetrievePropertiesEx(ctx *simulator.Context, r *types.ContinueRetrievePropertiesEx) soap.HasFault {
	body := new(methods.ContinueRetrievePropertiesExBody)
	p, ok := pc.take(r.Token)
	if !ok {
		body.Fault_ = simulator.Fault("unknown token", &types.InvalidArgument{InvalidProperty: "token"})
		return body
	}
	body.Res = &types.ContinueRetrievePropertiesExResponse{Returnval: pc.page(p.rest, p.limit)}
	return body
}

func (pc *PagingCollector) CancelRetrievePropertiesEx(ctx *simulator.Context, r *types.CancelRetrievePropertiesEx) soap.HasFault {
	pc.take(r.Token)
	return &methods.CancelRetrievePropertiesExBody{Res: new(types.CancelRetrievePropertiesExResponse)}
}
