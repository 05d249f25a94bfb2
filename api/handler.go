package api

import "net/http"

// Handler returns the API's routes without a listener or the token check,
// for tests that drive the handler directly (httptest) and for embedding.
// It grants full access: serve it only where Serve's socket mode or
// ServeTCP's token would protect it.
func (s *Server) Handler() http.Handler { return s.routes() }
