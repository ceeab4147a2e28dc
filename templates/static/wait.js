// Progressive enhancement for the "check your email" page: ask whether the sign-in was
// approved on another device, and move on by itself when it was.
(function () {
  var tries = 0;
  function poll() {
    if (++tries > 300) return; // about 10 minutes at most
    fetch("/auth", { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (s) {
        if (s.status === "signed_in" && s.redirect) { window.location.assign(s.redirect); }
        else if (s.status === "waiting") { setTimeout(poll, 2000); }
        else { window.location.assign("/auth"); }
      })
      .catch(function () { setTimeout(poll, 5000); });
  }
  setTimeout(poll, 2000);
})();
