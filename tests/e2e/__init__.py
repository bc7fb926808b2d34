"""End-to-end tests: real `edge-node run` processes, real sockets, real SQLite files."""
