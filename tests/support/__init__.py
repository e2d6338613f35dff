"""What the tests share: the test model server, processes, Postgres control, SSE and gRPC readers."""
