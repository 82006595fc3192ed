package fsm

// Test-only access to internals, for the fsm_test package.

// SetMaxMarks lowers the cap on marks, so tests can reach it.
func SetMaxMarks(f *FSM, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.maxMarks = n
}

// AllMarks lists every mark kept, due ones included, in (key, holder)
// order.
func AllMarks(f *FSM) []Mark {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var out []Mark
	f.marks.tree.Ascend(func(m *mark) bool {
		out = append(out, m.Mark)
		return true
	})
	return out
}
