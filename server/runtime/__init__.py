"""The thinker-performer runtime: two worker processes serve a batch of sessions in real time.

  supervisor.py  Supervisor, RuntimeConfig: start the pair, hand it sessions, watch it
  session.py     Session, OutputQueue, SessionEnd: one call, front end to pair, bounded in and out
  pair.py        WorkerPair, Fault: the two processes, READY, liveness, kill
  worker.py      the process shell around a core: signals, heartbeat, inbox, READY
  thinker.py     Thinker: the pure core of the input/decode side
  performer.py   Performer: the pure core of the solver side
  transport.py   Transport: gloo (+ nccl, ipc in transport_cuda.py), Packet, WireShapes
  messages.py    control messages over pipes
  unit_clock.py  UnitClock: due times and deadlines on time.monotonic()
  timings.py     StageTimer, UnitRecord, RunStats
  reference.py   run_single: the single-process reference path
  synthetic.py   a seeded synthetic input stream
Nothing is imported here, so that a worker process loads only what it runs.
"""
