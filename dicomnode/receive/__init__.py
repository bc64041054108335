"""Receive: the SCP (C-ECHO, C-STORE), header facts and instance rows, the archive, and the
assembler that turns complete series into queued jobs.
"""
