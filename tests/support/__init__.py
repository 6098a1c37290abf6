"""Helpers shared by the tests: real peers (openssl, pkilint, PostgreSQL) started on demand."""
