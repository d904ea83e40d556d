"""What a running supervisor waits on: tasks run as processes (`tasks`, `processes`,
`environment`), answers and task results woken from NOTIFY (`hub`), and questions
delivered to people (`delivery`)."""
