"""Runtime pieces shared by the model client and the workers: schedule, layout, handshake, timings."""
