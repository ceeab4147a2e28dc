// Progressive enhancement for the "check your email" page: ask whether the sign-in was
// approved on another device, and move on by itself when it was. Without JavaScript the
// page's "Continue" link does the same by hand.
(function () {
  var status = document.getElementById("wait-status");
  var tries = 0;
  function say(text) {
    if (status) { status.textContent = text; }
  }
  function poll() {
    if (++tries > 300) { return; } // about 10 minutes at most: the link has expired by then
    fetch("/auth", { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (s) {
        if (s.status === "signed_in" && s.redirect) {
          say("Approved. Signing you in…");
          window.location.assign(s.redirect);
        } else if (s.status === "waiting") {
          setTimeout(poll, 2000);
        } else {
          // Expired, used or cancelled: the page for that says what happened.
          window.location.assign("/auth");
        }
      })
      .catch(function () { setTimeout(poll, 5000); });
  }
  say("This page continues by itself once the link is opened or this browser is approved.");
  setTimeout(poll, 2000);
})();
