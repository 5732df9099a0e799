"""The dashboard's static files (index.html, dashboard.js, dashboard.css), served by
`orchestrator.api.dashboard`. Plain HTML, CSS and JavaScript: no build step."""
