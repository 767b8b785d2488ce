// The Today view's live rows (htmx polls /ui/today/rows). When the session has ended, the
// poll is redirected to the login form: open it as a page (the server adds ?next= so the
// user comes back to this view) instead of swapping the form into the table.
document.addEventListener("htmx:beforeSwap", function (event) {
  var xhr = event.detail.xhr;
  if (xhr && xhr.responseURL && xhr.responseURL.indexOf("/ui/login") !== -1) {
    event.detail.shouldSwap = false;
    window.location.reload();
  }
});
