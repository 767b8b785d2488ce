// The operator page's own script (no inline script: the CSP allows 'self' only).
// Elements with data-autosubmit submit their form when changed (the Today filters).
document.addEventListener("change", function (event) {
  var el = event.target;
  if (el && el.form && el.hasAttribute("data-autosubmit")) el.form.requestSubmit();
});
// the htmx requests of a page carry its CSRF token (the <body>'s or a form's)
document.addEventListener("htmx:configRequest", function (event) {
  var field = document.querySelector("input[name=csrf]");
  if (field) event.detail.headers["X-CSRF-Token"] = field.value;
});
