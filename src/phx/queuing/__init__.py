"""The Queuing Service (book: queuing_service.md).

``messages`` (wire structs), ``core`` (pure rules), ``store`` (SQLite/PostgreSQL), ``listeners`` (live
listeners and push), ``service`` (:class:`~phx.queuing.service.QsService`), ``routes`` (Starlette).
"""
