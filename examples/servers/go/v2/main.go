// examples/servers/go: net/http on the listening socket whose fd is -fd.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"math/rand"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	fd := flag.Int("fd", 3, "the listening socket's fd")
	flag.Parse()
	// FileListener dups the fd and sets O_NONBLOCK on it itself.
	l, err := net.FileListener(os.NewFile(uintptr(*fd), "http"))
	if err != nil {
		log.Fatal(err)
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// One response in 100, at random, ends its keep-alive connection,
		// so after a release the old color's connections end on their own
		// within bgd's drain_delay (net/http has no per-connection limit).
		if rand.Intn(100) == 0 {
			w.Header().Set("Connection", "close")
		}
		if r.URL.Path == "/healthz" {
			fmt.Fprintln(w, "ok")
			return
		}
		fmt.Fprintf(w, "hello from v2 release=%s color=%s pid=%d\n",
			os.Getenv("BG_RELEASE"), os.Getenv("BG_COLOR"), os.Getpid())
	})
	srv := &http.Server{Handler: h}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		// Finish in-flight requests, then exit (drain_timeout is 30 s).
		shutdown, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	}()
	if err := srv.Serve(l); err != http.ErrServerClosed {
		log.Fatal(err)
	}
	<-ctx.Done()
}
