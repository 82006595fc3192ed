package fsm

// heapItem is what an indexedHeap holds: a pointer that orders itself
// against another and keeps its own place in the heap (-1 when absent), so
// update and remove are O(log n) and the reaper never scans.
type heapItem[T any] interface {
	before(other T) bool
	slot() *int
}

// indexedHeap is a binary min-heap of items by their before order. The
// order must be total (ties broken by key and holder, or by lane), so the
// heap's shape and its first item are the same on every replica.
type indexedHeap[T heapItem[T]] []T

// markHeap holds every request-id mark by (due, key, holder).
type markHeap = indexedHeap[*mark]

func (h indexedHeap[T]) swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	*h[i].slot() = i
	*h[j].slot() = j
}

func (h indexedHeap[T]) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !h[i].before(h[p]) {
			return
		}
		h.swap(i, p)
		i = p
	}
}

// down sifts i towards the leaves and reports whether it moved.
func (h indexedHeap[T]) down(i int) bool {
	start := i
	n := len(h)
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		m := l
		if r := l + 1; r < n && h[r].before(h[l]) {
			m = r
		}
		if !h[m].before(h[i]) {
			break
		}
		h.swap(i, m)
		i = m
	}
	return i > start
}

// add appends x without restoring order; call init once after the last.
func (h *indexedHeap[T]) add(x T) {
	*x.slot() = len(*h)
	*h = append(*h, x)
}

// update inserts x or restores order after its due time changed.
func (h *indexedHeap[T]) update(x T) {
	i := *x.slot()
	if i < 0 {
		h.add(x)
		h.up(len(*h) - 1)
		return
	}
	if !h.down(i) {
		h.up(i)
	}
}

// remove takes x out of the heap, if it is in it.
func (h *indexedHeap[T]) remove(x T) {
	i := *x.slot()
	if i < 0 {
		return
	}
	last := len(*h) - 1
	if i != last {
		h.swap(i, last)
	}
	var zero T
	(*h)[last] = zero
	*h = (*h)[:last]
	*x.slot() = -1
	if i != last && !h.down(i) {
		h.up(i)
	}
}

// init restores heap order after every due time changed, in O(n).
func (h indexedHeap[T]) init() {
	for i := len(h)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
}

func (m *mark) before(o *mark) bool {
	if m.Due != o.Due {
		return m.Due < o.Due
	}
	return markLess(m, o)
}

func (m *mark) slot() *int { return &m.hidx }
