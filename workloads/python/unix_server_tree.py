"""unix_server_tree.py - ferry test workload: a server and its child, its client, over named
unix sockets.

Usage:   python3 unix_server_tree.py     (in a writable directory: it makes ./server.sock)

The parent listens on a path (./server.sock, stream) and on an abstract name (seqpacket). Its
child connects to the path and sends "first;", 1.5 s later "second;", then connects once more
to each name ("new;" to the path, "abstract;" to the abstract name) and exits. The parent
accepts the first connection, prints "ready" once "first;" arrived (the connection, both
listeners and the child's socket are all in place then), then accepts and reads the rest,
reaps the child and removes the socket file.

Output (stdout):
    "ready"
    "first;second; new; abstract; 0"
    "done"
Exit status 0. Nothing printed depends on timing or pids.
"""
import os
import socket
import time

path = os.path.abspath("server.sock")
abstract = "\0ferry-workload-" + os.urandom(6).hex()
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
server.listen(4)
records = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
records.bind(abstract)
records.listen(2)

child = os.fork()
if child == 0:
    server.close()
    records.close()
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(path)
    c.sendall(b"first;")
    time.sleep(1.5)
    c.sendall(b"second;")
    d = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    d.connect(path)
    d.sendall(b"new;")
    d.close()
    e = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    e.connect(abstract)
    e.send(b"abstract;")
    e.close()
    c.close()
    os._exit(0)


def read_all(conn):
    data = b""
    while True:
        chunk = conn.recv(64)
        if not chunk:
            return data
        data += chunk


conn, _ = server.accept()
first = b""
while len(first) < len(b"first;"):
    first += conn.recv(len(b"first;") - len(first))
print("ready", flush=True)
d, _ = server.accept()
new = read_all(d)
e, _ = records.accept()
rec = e.recv(64)
rest = read_all(conn)
_, status = os.waitpid(child, 0)
os.unlink(path)
print((first + rest).decode(), new.decode(), rec.decode(), status, flush=True)
print("done", flush=True)
