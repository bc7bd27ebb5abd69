"""The operator commands (`falcon-lake status|replay|dlq|audit|lake`): they sit above both
processes and may import the kernel (`falcon_lake`) and the publisher's filter and converter;
nothing below imports them (docs/architecture.md)."""
