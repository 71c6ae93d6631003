package identity

import (
	"fmt"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
)

// IdentityMeta is what the engine keeps about an identity besides its members.
type IdentityMeta struct {
	ID      string    `json:"id"`
	Seq     uint64    `json:"seq"` // creation order; older identities win ties
	Status  Status    `json:"status"`
	Created time.Time `json:"created"`
}

// Snapshot is the engine's whole state in plain structs. Members are in
// arrival order; restoring them in that order gives identical decisions.
type Snapshot struct {
	Dim        int            `json:"dim"`
	Seq        uint64         `json:"seq"` // last identity sequence number issued
	Identities []IdentityMeta `json:"identities"`
	Members    []visit.Member `json:"members"`
}

// Snapshot copies the engine's state.
func (e *Engine) Snapshot() Snapshot {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := Snapshot{Dim: e.dim, Seq: e.seq}
	for _, id := range e.ids {
		s.Identities = append(s.Identities, IdentityMeta{ID: id.id, Seq: id.seq, Status: id.status, Created: id.created})
	}
	vec := append([]float32(nil), e.sp.vec...)
	s.Members = make([]visit.Member, len(e.vid))
	for i := range e.vid {
		s.Members[i] = visit.Member{VisitID: e.vid[i], Time: e.tm[i], Embedding: vec[i*e.dim : (i+1)*e.dim : (i+1)*e.dim],
			Mask: e.mask[i], IdentityID: e.ids[e.who[i]].id}
	}
	return s
}

// Restore replaces the engine's state with s.
func (e *Engine) Restore(s Snapshot) error {
	if s.Dim != 0 && s.Dim != e.dim {
		return fmt.Errorf("restore identities: snapshot dimension %d, engine %d", s.Dim, e.dim)
	}
	byID := map[string]int32{}
	var ids []*ident
	seq := s.Seq
	for _, m := range s.Identities {
		if _, dup := byID[m.ID]; dup || m.ID == "" {
			return fmt.Errorf("restore identities: duplicate or empty identity id %q", m.ID)
		}
		if m.Status != Pending && m.Status != Confirmed {
			return fmt.Errorf("restore identities: identity %q has status %q", m.ID, m.Status)
		}
		byID[m.ID] = int32(len(ids))
		ids = append(ids, &ident{id: m.ID, seq: m.Seq, status: m.Status, created: m.Created})
		seq = max(seq, m.Seq)
	}
	sp := newSpace(e.dim, e.cfg.Thresholds, e.cfg.Exact)
	n := len(s.Members)
	room := n + max(1024, n/8) // headroom so that the next visits do not copy the slab
	sp.vec = make([]float32, 0, room*e.dim)
	sp.cls = make([]uint8, 0, room)
	sp.sk = make([]uint64, 0, room*sketchWords)
	vid := make([]string, 0, n)
	tm := make([]time.Time, 0, n)
	mask := make([]visit.MaskState, 0, n)
	who := make([]int32, 0, n)
	vidx := make(map[string]int32, n)
	for i, m := range s.Members {
		w, ok := byID[m.IdentityID]
		if !ok {
			return fmt.Errorf("restore identities: visit %q names unknown identity %q", m.VisitID, m.IdentityID)
		}
		if len(m.Embedding) != e.dim {
			return fmt.Errorf("restore identities: visit %q has %d dimensions, want %d", m.VisitID, len(m.Embedding), e.dim)
		}

		if m.VisitID != "" {
			if _, dup := vidx[m.VisitID]; dup {
				return fmt.Errorf("restore identities: duplicate visit %q", m.VisitID)
			}
			vidx[m.VisitID] = int32(i)
		}
		if err := sp.addNormalized(m.Embedding, maskClass(m.Mask)); err != nil {
			return fmt.Errorf("restore identities: visit %q: %w", m.VisitID, err)
		}
		vid = append(vid, m.VisitID)
		tm = append(tm, m.Time)
		mask = append(mask, m.Mask)
		who = append(who, w)
		ids[w].members = append(ids[w].members, int32(i))
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.sp, e.vid, e.tm, e.mask, e.who, e.vidx, e.seq = sp, vid, tm, mask, who, vidx, seq
	e.bumpGen()
	e.lnk = make([]bool, n)
	live := ids[:0]
	for _, id := range ids {
		if len(id.members) == 0 {
			continue
		}
		st := id.status
		e.recompute(id, true)
		id.status = st
		live = append(live, id)
	}
	e.setIdents(live)
	return nil
}
