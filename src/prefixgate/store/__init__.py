"""What prefixgate keeps: the audit log (``audit``: the record and the memory and
JSON-lines sinks; ``sqlite``: the SQLite sink; ``sinks``: which sink a path names,
for writing and reading), the capture file (``capture``) and routing state (``state``)."""
