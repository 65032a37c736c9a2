package store

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// errTxDone is returned by a transaction used after its fn returned.
var errTxDone = errors.New("store: transaction used after its function returned")

// readTx is a ReadTx over one bolt transaction (read-only for View, the
// shared write transaction for Update).
type readTx struct {
	tx   *bolt.Tx
	rev  int64
	done bool
}

func (r *readTx) Revision() int64 { return r.rev }

func (r *readTx) data() *bolt.Bucket { return r.tx.Bucket(bucketData) }

func (r *readTx) Get(key string) (KV, bool, error) {
	if r.done {
		return KV{}, false, errTxDone
	}
	raw := r.data().Get([]byte(key))
	if raw == nil {
		return KV{}, false, nil
	}
	kv, err := decodeData([]byte(key), raw)
	if err != nil {
		return KV{}, false, err
	}
	return kv, true, nil
}

func (r *readTx) List(prefix, startAfter string, limit int) ([]KV, error) {
	if r.done {
		return nil, errTxDone
	}
	return listMerged(r.data().Cursor(), nil, prefix, startAfter, limit)
}

func (r *readTx) Count(prefix string) (int, error) {
	if r.done {
		return 0, errTxDone
	}
	return countPrefix(r.data().Cursor(), prefix), nil
}

// seekStart is where a scan for keys with prefix strictly after startAfter
// begins, and whether the first key found must be skipped if equal to it.
func seekStart(prefix, startAfter string) []byte {
	if startAfter != "" && startAfter >= prefix {
		return []byte(startAfter)
	}
	return []byte(prefix)
}

// countPrefix counts keys by walking the cursor over the prefix range. It
// touches only keys (no value decoding), so it costs one B+tree descent plus
// a leaf walk over the range.
func countPrefix(c *bolt.Cursor, prefix string) int {
	n := 0
	for k, _ := c.Seek([]byte(prefix)); k != nil && hasPrefix(k, prefix); k, _ = c.Next() {
		n++
	}
	return n
}

// overlayEntry is one pending write of a transaction.
type overlayEntry struct {
	value   []byte
	deleted bool
}

// writeTx is the Tx handed to an Update fn. Its writes go to a private overlay
// so that an fn returning an error can be discarded without touching the bolt
// transaction, which is shared with the other fns of the group commit. Reads
// see the overlay first, then the bolt write transaction, which already holds
// the writes of earlier successful fns of the same batch.
type writeTx struct {
	readTx
	writes map[string]*overlayEntry
}

func newWriteTx(tx *bolt.Tx, rev int64) *writeTx {
	return &writeTx{readTx: readTx{tx: tx, rev: rev}, writes: make(map[string]*overlayEntry)}
}

func (w *writeTx) Get(key string) (KV, bool, error) {
	if w.done {
		return KV{}, false, errTxDone
	}
	if e, ok := w.writes[key]; ok {
		if e.deleted {
			return KV{}, false, nil
		}
		kv, found, err := w.readTx.Get(key)
		if err != nil {
			return KV{}, false, err
		}
		return w.pendingKV(key, e, kv, found), true, nil
	}
	return w.readTx.Get(key)
}

// pendingKV is what a read inside the transaction sees for a key it wrote:
// the new value, with the revisions the commit will give it.
func (w *writeTx) pendingKV(key string, e *overlayEntry, base KV, existed bool) KV {
	kv := KV{Key: key, Value: slices.Clone(e.value), ModRevision: w.rev + 1}
	if existed {
		kv.CreateRevision = base.CreateRevision
	} else {
		kv.CreateRevision = w.rev + 1
	}
	return kv
}

func (w *writeTx) List(prefix, startAfter string, limit int) ([]KV, error) {
	if w.done {
		return nil, errTxDone
	}
	return listMerged(w.data().Cursor(), w, prefix, startAfter, limit)
}

func (w *writeTx) Count(prefix string) (int, error) {
	if w.done {
		return 0, errTxDone
	}
	n := countPrefix(w.data().Cursor(), prefix)
	b := w.data()
	for k, e := range w.writes {
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		existed := b.Get([]byte(k)) != nil
		switch {
		case e.deleted && existed:
			n--
		case !e.deleted && !existed:
			n++
		}
	}
	return n, nil
}

func (w *writeTx) Put(key string, value []byte) error {
	if w.done {
		return errTxDone
	}
	if err := validKey(key); err != nil {
		return err
	}
	if len(value) > bolt.MaxValueSize-dataHeaderLen {
		return fmt.Errorf("store: put %q: value of %d bytes is too large", key, len(value))
	}
	// Copy: the caller may reuse its buffer after Put returns.
	w.writes[key] = &overlayEntry{value: slices.Clone(value)}
	return nil
}

func (w *writeTx) Delete(key string) error {
	if w.done {
		return errTxDone
	}
	if err := validKey(key); err != nil {
		return err
	}
	w.writes[key] = &overlayEntry{deleted: true}
	return nil
}

func validKey(key string) error {
	if key == "" {
		return errors.New("store: empty key")
	}
	if len(key) > bolt.MaxKeySize {
		return fmt.Errorf("store: key of %d bytes is too large", len(key))
	}
	return nil
}

// sortedOverlayKeys returns the overlay keys with the prefix that are strictly
// after startAfter, in key order.
func (w *writeTx) sortedOverlayKeys(prefix, startAfter string) []string {
	var keys []string
	for k := range w.writes {
		if strings.HasPrefix(k, prefix) && k > startAfter {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}

// listMerged walks the bolt cursor over the prefix range and merges in the
// pending writes of w (nil for a read-only view), in key order.
func listMerged(c *bolt.Cursor, w *writeTx, prefix, startAfter string, limit int) ([]KV, error) {
	var ov []string
	if w != nil {
		ov = w.sortedOverlayKeys(prefix, startAfter)
	}
	var out []KV
	full := func() bool { return limit > 0 && len(out) >= limit }

	start := seekStart(prefix, startAfter)
	k, v := c.Seek(start)
	if k != nil && startAfter != "" && bytes.Equal(k, []byte(startAfter)) {
		k, v = c.Next()
	}
	for !full() {
		diskOK := k != nil && hasPrefix(k, prefix)
		if !diskOK && len(ov) == 0 {
			break
		}
		// Pick the smaller of the next disk key and the next overlay key.
		useOverlay := len(ov) > 0 && (!diskOK || ov[0] <= string(k))
		if useOverlay {
			key := ov[0]
			ov = ov[1:]
			var base KV
			existed := false
			if diskOK && key == string(k) {
				var err error
				if base, err = decodeData(k, v); err != nil {
					return nil, err
				}
				existed = true
				k, v = c.Next()
			}
			e := w.writes[key]
			if !e.deleted {
				out = append(out, w.pendingKV(key, e, base, existed))
			}
			continue
		}
		kv, err := decodeData(k, v)
		if err != nil {
			return nil, err
		}
		out = append(out, kv)
		k, v = c.Next()
	}
	return out, nil
}
