// The login page: nothing to do but keep the token out of history and focus the field.
const field = document.getElementById("token");
if (field) field.focus();
