// Package store is the controller's durable, revisioned key-value store.
//
// It owns persistence, revisions and change notification. It knows nothing of
// resources, validation or IPAM: values are opaque bytes. Every committed
// transaction gets the next revision; every key remembers the revision that
// created it and the one that last modified it. Watchers can resume from any
// revision that has not been compacted away, which is what lets the agent
// distributor and API watchers survive restarts without replaying history.
//
// The embedded default is bbolt (Open). The interface is shaped so that an
// etcd backend can implement it with etcd's own revisions and STM.
package store

import (
	"context"
	"errors"
)

// Errors returned by stores. Callers test them with errors.Is.
var (
	// ErrCompacted: a watch asked for revisions older than the retained log.
	// The caller must re-list and watch from the revision of that list.
	ErrCompacted = errors.New("store: requested revision has been compacted")
	// ErrClosed: the store has been closed.
	ErrClosed = errors.New("store: closed")
)

// KV is one stored key and its value.
type KV struct {
	Key            string
	Value          []byte
	CreateRevision int64 // revision of the transaction that created the key
	ModRevision    int64 // revision of the transaction that last wrote the key
}

// EventType says what happened to a key.
type EventType int

const (
	EventPut EventType = iota + 1
	EventDelete
)

func (t EventType) String() string {
	switch t {
	case EventPut:
		return "PUT"
	case EventDelete:
		return "DELETE"
	}
	return "UNKNOWN"
}

// Event is one change to one key. For EventDelete, KV.Value is the value the
// key held before the delete (so watchers can tell what went away) and
// KV.ModRevision is the revision of the delete.
type Event struct {
	Type EventType
	KV   KV
}

// WatchResponse carries all events of one committed revision that match the
// watch prefix. Err is set (and the channel then closed) when the watch can
// not continue, e.g. ErrCompacted for a watcher that fell too far behind.
type WatchResponse struct {
	Revision int64
	Events   []Event
	Err      error
}

// ReadTx is a consistent read-only view of the store at one revision.
type ReadTx interface {
	// Revision is the revision this view reflects.
	Revision() int64
	// Get returns the key, or ok=false if it does not exist.
	Get(key string) (kv KV, ok bool, err error)
	// List returns up to limit keys with the prefix, in key order, strictly
	// after startAfter (empty: from the first). limit <= 0 means no limit.
	List(prefix, startAfter string, limit int) ([]KV, error)
	// Count returns the number of keys with the prefix.
	Count(prefix string) (int, error)
}

// Tx is a serializable read-write transaction. Reads see the transaction's own
// earlier writes.
type Tx interface {
	ReadTx
	// Put creates or replaces the key.
	Put(key string, value []byte) error
	// Delete removes the key; deleting a missing key is not an error.
	Delete(key string) error
}

// Store is a durable, revisioned key-value store.
type Store interface {
	// Update runs fn in a serializable read-write transaction. If fn returns
	// nil, all its writes are committed atomically at one new revision and
	// are durable (fsynced) before Update returns that revision. If fn
	// returns an error, nothing it wrote is visible, ever, and Update returns
	// that error unchanged. A transaction that writes nothing does not create
	// a revision and returns the current one. fn may run more than once and
	// must not have side effects outside the transaction.
	// Concurrent Updates are group-committed: many transactions share one
	// fsync, and none of them waits for an artificial delay.
	Update(ctx context.Context, fn func(Tx) error) (rev int64, err error)
	// View runs fn in a consistent read-only snapshot.
	View(ctx context.Context, fn func(ReadTx) error) error
	// Watch streams changes to keys with the prefix, starting with the
	// revision after fromRev (fromRev = current revision: only new changes).
	// The channel is closed when ctx is done or the watch fails (the last
	// response then carries Err). ErrCompacted is returned at once if fromRev
	// is older than the retained change log.
	Watch(ctx context.Context, prefix string, fromRev int64) (<-chan WatchResponse, error)
	// Revision is the revision of the last committed transaction (0: empty).
	Revision() int64
	// Close releases the store. Pending Updates fail with ErrClosed.
	Close() error
}
