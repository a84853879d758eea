"""The process around the app: a worker's loop, sockets and drain, the supervisor of N workers, client
connections held to limits, and the screen that answers refused calls from their raw bytes."""
