"""RFC 9420 Messaging Layer Security: client groups and the server-side public group."""
