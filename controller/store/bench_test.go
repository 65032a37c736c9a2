package store

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// Both benchmarks do the same work per operation: one durable transaction
// putting one 128-byte value under a fresh key, from GOMAXPROCS*parallelism
// goroutines. Compare ns/op (and the fsyncs/op metric) to see what group
// commit buys over one bolt transaction and fsync per write:
//
//	go test -run '^$' -bench 'UpdateParallel|NaiveBolt' -benchtime 2000x ./controller/store/

const benchParallelism = 16 // goroutines per GOMAXPROCS: an API server has many

func BenchmarkUpdateParallel(b *testing.B) {
	s, _ := openTest(b, Options{})
	val := make([]byte, 128)
	var seq atomic.Int64
	b.SetParallelism(benchParallelism)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			key := fmt.Sprintf("bench/%012d", seq.Add(1))
			if _, err := s.Update(context.Background(), func(tx Tx) error {
				return tx.Put(key, val)
			}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	st := s.Stats()
	b.ReportMetric(float64(st.Commits)/float64(b.N), "fsyncs/op")
	b.ReportMetric(float64(st.Transactions)/float64(st.Commits), "txns/commit")
}

// BenchmarkNaiveBoltPerWriteParallel is the baseline: the same writes, each
// in its own bolt read-write transaction with its own fsync.
func BenchmarkNaiveBoltPerWriteParallel(b *testing.B) {
	db, err := bolt.Open(filepath.Join(b.TempDir(), "naive.db"), 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketData)
		return err
	}); err != nil {
		b.Fatal(err)
	}
	val := make([]byte, 128)
	var seq atomic.Int64
	b.SetParallelism(benchParallelism)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n := seq.Add(1)
			key := []byte(fmt.Sprintf("bench/%012d", n))
			if err := db.Update(func(tx *bolt.Tx) error {
				return tx.Bucket(bucketData).Put(key, encodeData(val, n, n))
			}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(1, "fsyncs/op")
}
