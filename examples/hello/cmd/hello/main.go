// Command hello serves the hello page on $PORT (or :80) until SIGINT or
// SIGTERM: a ready-made machine command for devgate's process driver.
package main

import (
	"context"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/devgate/devgate/examples/hello"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := hello.Run(ctx, "", log.Printf); err != nil {
		log.Fatal(err)
	}
}
