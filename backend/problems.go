package backend

import (
	"fmt"
	"net/http"
	"time"

	"github.com/keygate/keygate/internal/problem"
)

// The backend's problems. Where a reference doc fixes the message, the title
// (and so the "error" member) is that message verbatim.
var (
	errNotFromGateway = problem.New(http.StatusForbidden, "not-from-gateway", "Forbidden",
		"This service only answers requests forwarded by the keygate gateway.")
	errNotFound = problem.New(http.StatusNotFound, "not-found", "Not found", "")
	errMethod   = problem.New(http.StatusMethodNotAllowed, "method-not-allowed", "Method not allowed", "")
	// SecLink's words for a 500: the one doc to give any
	errInternal = problem.New(http.StatusInternalServerError, "internal", "Internal error", "The server encountered a problem.").
			WithError("Server encountered a problem")
	errUnavailable = problem.New(http.StatusServiceUnavailable, "unavailable", "Storage unavailable", "")
	errBadJSON     = problem.New(http.StatusBadRequest, "invalid-json", "Invalid JSON body", "The request body must be a JSON object.")
	errBodyTimeout = problem.New(http.StatusRequestTimeout, "body-timeout", "Request Timeout", "The request body did not arrive in time.")
	errBodyTooBig  = problem.New(http.StatusRequestEntityTooLarge, "body-too-large", "Request body too large", "")

	// Upload (Slink).
	errImageMissing = problem.New(http.StatusBadRequest, "image-missing", "Missing image",
		"Send multipart/form-data with the file in the field named image.")
	errImageEmpty   = problem.New(http.StatusBadRequest, "image-empty", "Empty image", "The image field holds no data.")
	errBadMultipart = problem.New(http.StatusBadRequest, "invalid-multipart", "Invalid multipart body", "")
	errImageType    = problem.New(http.StatusUnsupportedMediaType, "unsupported-image", "Unsupported image type",
		"Only PNG, JPEG, GIF and WebP images are accepted.")
	errImageTooBig = problem.New(http.StatusRequestEntityTooLarge, "image-too-large", "Image too large", "")
	errRange       = problem.New(http.StatusRequestedRangeNotSatisfiable, "range-not-satisfiable", "Range not satisfiable",
		"The requested range lies outside the image; Content-Range gives its size.")
	errPrecondition = problem.New(http.StatusPreconditionFailed, "precondition-failed", "Precondition failed",
		"The image does not match the request's If-Match or If-Unmodified-Since.")
	errBadBaseURL = problem.New(http.StatusBadRequest, "invalid-base-url", "Invalid baseUrl",
		"baseUrl must be an absolute http(s) URL without query, fragment or credentials.")
	errBadAPIKey = problem.New(http.StatusBadRequest, "invalid-api-key-param", "Invalid apiKey",
		"apiKey is required and must be printable ASCII without spaces.")

	// Short links (Short Link doc messages).
	errURLRequired  = problem.New(http.StatusBadRequest, "url-required", "URL is required", "")
	errInvalidURL   = problem.New(http.StatusBadRequest, "invalid-url", "Invalid URL", "Only absolute http and https URLs are accepted.")
	errSlugReserved = problem.New(http.StatusBadRequest, "slug-reserved", "Slug is reserved", "")
	errSlugExists   = problem.New(http.StatusConflict, "slug-exists", "Slug already exists", "")
	errInvalidSlug  = problem.New(http.StatusBadRequest, "invalid-slug", "Invalid slug",
		"A slug has 2 to 64 characters: letters, digits, '-' and '_'.")
	errLinkNotFound = problem.New(http.StatusNotFound, "link-not-found", "Link not found", "")

	// Secrets (SecLink doc wording).
	errSecretPayload = problem.New(http.StatusBadRequest, "invalid-secret", "Invalid payload or missing fields", "")
	errSecretTooBig  = problem.New(http.StatusRequestEntityTooLarge, "secret-too-large", "Secret too large", "")
	errSecretMissing = problem.New(http.StatusNotFound, "secret-not-found", "Secret does not exist or has already been viewed",
		"The secret never existed, has expired, or was viewed long enough ago that its tombstone is gone.")
	errSecretGone   = problem.New(http.StatusGone, "secret-gone", "Secret was previously viewed and permanently destroyed", "")
	errPasscodeNeed = problem.New(http.StatusUnauthorized, "passcode-required", "Passcode required",
		"Send the passcode hash in the X-Passcode-Hash header or the passcodeHash query parameter.")
	errPasscodeWrong  = problem.New(http.StatusUnauthorized, "wrong-passcode", "Wrong passcode", "")
	errPasscodeLocked = problem.New(http.StatusTooManyRequests, "passcode-attempts", "Too many wrong passcodes",
		fmt.Sprintf("At most %d wrong passcodes are taken per secret in %d minutes; Retry-After says when the next is.",
			MaxPasscodeAttempts, int(PasscodeAttemptWindow/time.Minute))).
		WithError("Too many wrong passcodes. Try again later.")
)
