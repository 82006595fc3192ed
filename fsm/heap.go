package fsm

// expiryHeap is a binary min-heap of records ordered by due time, then key,
// then token (so equal due times pop in the same order on every replica;
// a key's records have distinct tokens). Each record
// knows its place (hidx, -1 when absent), so update and remove are
// O(log n) and the reaper never scans.
type expiryHeap []*record

func (h expiryHeap) less(i, j int) bool {
	a, b := h[i].due(), h[j].due()
	if a != b {
		return a < b
	}
	if h[i].Key != h[j].Key {
		return h[i].Key < h[j].Key
	}
	return h[i].Token < h[j].Token
}

func (h expiryHeap) swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].hidx = i
	h[j].hidx = j
}

func (h expiryHeap) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !h.less(i, p) {
			return
		}
		h.swap(i, p)
		i = p
	}
}

func (h expiryHeap) down(i int) bool {
	start := i
	n := len(h)
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		m := l
		if r := l + 1; r < n && h.less(r, l) {
			m = r
		}
		if !h.less(m, i) {
			break
		}
		h.swap(i, m)
		i = m
	}
	return i > start
}

// update inserts r or restores order after its due time changed.
func (h *expiryHeap) update(r *record) {
	if r.hidx < 0 {
		r.hidx = len(*h)
		*h = append(*h, r)
		h.up(r.hidx)
		return
	}
	if !h.down(r.hidx) {
		h.up(r.hidx)
	}
}

func (h *expiryHeap) remove(r *record) {
	i := r.hidx
	if i < 0 {
		return
	}
	last := len(*h) - 1
	if i != last {
		h.swap(i, last)
	}
	(*h)[last] = nil
	*h = (*h)[:last]
	r.hidx = -1
	if i != last {
		if !h.down(i) {
			h.up(i)
		}
	}
}

// init restores heap order after every due time changed, in O(n).
func (h expiryHeap) init() {
	for i := len(h)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
}
